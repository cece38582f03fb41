"""Parquet manifests: one row per image; every later stage reads these and never globs.

Paths are stored relative to the manifest's folder when they lie below it (so a rendered
dataset can move), absolute otherwise (an external dataset root).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io import bad_image_id, files_fingerprint, label_png_path

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("label_path", pa.string()),  # null where there is no pixel ground truth
        ("class_ids", pa.list_(pa.int16())),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("background_path", pa.string()),  # synthetic world only: background kind per pixel
    ]
)


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    image_path: Path
    label_path: Optional[Path]
    class_ids: tuple[int, ...]
    height: int
    width: int
    background_path: Optional[Path] = None


def _relative(path: Optional[Path], base: Path) -> Optional[str]:
    if path is None:
        return None
    path = Path(path)
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def write_manifest(path: str | Path, records: list[ImageRecord], base: str | Path | None = None) -> None:
    """Write records; `base` is the folder the manifest will finally live in (default: its own)."""
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    columns = {
        "image_id": [r.image_id for r in records],
        "image_path": [_relative(r.image_path, base) for r in records],
        "label_path": [_relative(r.label_path, base) for r in records],
        "class_ids": [list(r.class_ids) for r in records],
        "height": [r.height for r in records],
        "width": [r.width for r in records],
        "background_path": [_relative(r.background_path, base) for r in records],
    }
    pq.write_table(pa.table(columns, schema=SCHEMA), path)


def read_manifest(path: str | Path) -> list[ImageRecord]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (run the prepare_data stage first)")
    table = pq.read_table(path)
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise UserError(f"{path}: manifest lacks columns {sorted(missing)}")
    base = path.parent
    bad = [i for i in table.column("image_id").to_pylist() if i is None or bad_image_id(i)]
    if bad:
        raise UserError(f"{path}: image id {bad[0]!r} is not a plain file name ({len(bad)} such ids; "
                        "ids name each image's files in the stages' folders)")

    def resolve(value: Optional[str]) -> Optional[Path]:
        return None if value is None else Path(os.path.join(base, value))

    return [
        ImageRecord(
            image_id=row["image_id"],
            image_path=resolve(row["image_path"]),
            label_path=resolve(row["label_path"]),
            class_ids=tuple(row["class_ids"]),
            height=row["height"],
            width=row["width"],
            background_path=resolve(row["background_path"]),
        )
        for row in table.to_pylist()
    ]


def data_fingerprint(records: list[ImageRecord]) -> str:
    """What the records' files are now (sizes and modification times of every image, label and
    background map): a stage's resume stamp and a training run's name change when any of them
    is rewritten, even where the manifest stays the same (an edited VOC tree)."""
    paths = [p for r in records for p in (r.image_path, r.label_path, r.background_path) if p is not None]
    try:
        return files_fingerprint(paths)
    except OSError as exc:
        raise UserError(f"{exc.filename}: listed in the manifest but not readable ({exc.strerror})") from None


def same_shape_batches(records: list[ImageRecord], batch_size: int) -> Iterator[list[ImageRecord]]:
    """Batches of records whose images share a size and a class count, so that their images and
    per-class maps stack into one tensor."""
    groups: dict[tuple[int, int, int], list[ImageRecord]] = {}
    for record in records:
        groups.setdefault((record.height, record.width, len(record.class_ids)), []).append(record)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def records_with_labels(manifest: str | Path, labels: str | Path, batch_size: int, section: str, producer: str) -> list[ImageRecord]:
    """A training manifest's records, once there are enough for one batch of `section` and each
    has its label PNG in `labels` (written by the stage `producer`)."""
    records = read_manifest(manifest)
    if len(records) < batch_size:
        raise UserError(f"{manifest}: {len(records)} images, fewer than {section}.batch_size={batch_size}")
    missing = [r for r in records if not label_png_path(labels, r.image_id).is_file()]
    if missing:
        raise UserError(f"{label_png_path(labels, missing[0].image_id)}: label missing ({len(missing)} of {len(records)}; run {producer} first)")
    return records
