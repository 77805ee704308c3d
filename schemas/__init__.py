"""Manifest schemas and record types. See ARCHITECTURE.md."""
from chromabeam.schemas.manifest import (  # noqa: F401
    SCHEMA_VERSION,
    STATUS_ERROR,
    STATUS_OK,
    ManifestRow,
    manifest_schema,
)
