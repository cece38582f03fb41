from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.manifest import ImageRecord, read_manifest, write_manifest
from pipeline.errors import UserError
from pipeline.io import atomic_dir, atomic_path, save_label_png, voc_palette


def test_manifest_round_trip_keeps_relative_and_absolute_paths(tmp_path):
    external = tmp_path / "elsewhere" / "img.jpg"
    records = [
        ImageRecord("a", tmp_path / "data/images/a.png", tmp_path / "data/masks/a.png", (1, 3), 64, 48,
                    tmp_path / "data/backgrounds/a.png"),
        ImageRecord("b", external, None, (2,), 10, 20),
    ]
    (tmp_path / "data").mkdir()
    write_manifest(tmp_path / "data/train.parquet", records)
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    back = read_manifest(moved / "train.parquet")
    assert back[0].image_path == moved / "images/a.png"  # relative paths follow the folder
    assert back[0].class_ids == (1, 3) and (back[0].height, back[0].width) == (64, 48)
    assert back[1].image_path == external and back[1].label_path is None and back[1].background_path is None


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(UserError, match="nope.parquet: manifest not found"):
        read_manifest(tmp_path / "nope.parquet")


def test_label_png_uses_voc_palette_and_keeps_ids(tmp_path):
    label = np.array([[0, 1, 2], [15, 20, 255]], np.uint8)
    save_label_png(tmp_path / "l.png", label)
    image = Image.open(tmp_path / "l.png")
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), label)
    palette = voc_palette()
    assert palette[3:6] == [128, 0, 0] and palette[15 * 3 : 16 * 3] == [192, 128, 128]  # aeroplane, person


def test_atomic_writers_leave_nothing_behind_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("previous result")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old.txt", "out"]
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "new.txt").write_text("done")
    assert sorted(p.name for p in Path(tmp_path / "out").iterdir()) == ["new.txt"]


def test_failed_atomic_file_removes_the_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "b" / "x.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
