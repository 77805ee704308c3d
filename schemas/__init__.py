"""Manifest schemas and record types. See ARCHITECTURE.md."""
__all__ = ["SCHEMA_VERSION", "STATUS_ERROR", "STATUS_OK", "ManifestRow", "manifest_schema"]

from chromabeam.schemas.manifest import (
    SCHEMA_VERSION,
    STATUS_ERROR,
    STATUS_OK,
    ManifestRow,
    manifest_schema,
)
