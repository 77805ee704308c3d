"""Typed records that flow between pipeline steps (never ad hoc dicts)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from chromabeam.schemas.manifest import ManifestRow


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """Encoded bytes of one input image as read from a shard.

    ``source_uri`` names where it came from: a file URL, or ``SHARD#member`` for a tar
    member, or ``FILE#row=N`` for a Parquet row.
    """

    key: str
    source_uri: str
    data: bytes
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReadError:
    """A record (or a whole shard) that could not be read; becomes an error row."""

    key: str
    source_uri: str
    reason: str


@dataclasses.dataclass
class DecodedImage:
    """An RGB uint8 image (H, W, 3) with where it came from."""

    key: str
    source_uri: str
    pixels: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])




@dataclasses.dataclass(frozen=True)
class OutputImage:
    """An encoded image a task publishes under OUTPUT/images.

    ``suffix`` is the WebDataset member extension (``jpg``, ``input.jpg``, …) and
    ``column`` the manifest column that receives its URI (``output_uri``, ``input_uri``,
    ``target_uri``).
    """

    suffix: str
    data: bytes
    column: str = "output_uri"


@dataclasses.dataclass
class TaskResult:
    """What a task step produces for one manifest row: the row and the images it names."""

    row: ManifestRow
    images: tuple[OutputImage, ...] = ()
