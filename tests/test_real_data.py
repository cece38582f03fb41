"""The VOC 2012 and COCO 2014 readers on miniature trees in the standard layouts."""
import numpy as np
import pytest
from PIL import Image

from pipeline.cam.data import load_image
from pipeline.data.real import VOC_CLASSES, coco_records, voc_records
from pipeline.errors import UserError

MODES = ["RGB", "RGB", "L", "CMYK"]  # grayscale and CMYK JPEGs among them, as in VOC and COCO


def _voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved), as its PNG masks carry it."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r, g, b = r | ((c >> 0) & 1) << shift, g | ((c >> 1) & 1) << shift, b | ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _scene(image_path, mask_path, classes, size=(40, 48), mask_size=None, mode="RGB"):
    """An image and its palette mask: one block per class, each with a 255 border."""
    height, width = size
    rng = np.random.default_rng(len(classes) + width)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(image_path, "JPEG")
    label = np.zeros(mask_size or size, np.uint8)
    for i, c in enumerate(classes):
        top, left = 4 + 10 * i, 4 + 8 * i
        label[top - 1 : top + 9, left - 1 : left + 9] = 255
        label[top : top + 8, left : left + 8] = c
    mask = Image.fromarray(label, mode="P")
    mask.putpalette(_voc_palette())
    mask.save(mask_path)


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    classes = {f"2007_{i:06d}": [1 + (i * 7) % 20, 1 + (i * 3) % 20][: 1 + i % 2] for i in range(12)}
    for i, (image_id, ids) in enumerate(classes.items()):
        _scene(root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClassAug" / f"{image_id}.png", ids,
               mode=MODES[i % len(MODES)])
        if i < 6:  # the official masks cover the train/val part
            _scene(root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png", ids,
                   mode=MODES[i % len(MODES)])
    ids = list(classes)
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[4:6]) + "\n")
    return root, classes


def test_voc_splits_read_with_labels_from_the_masks(voc_root):
    root, classes = voc_root
    records = voc_records(root, "train_aug")
    assert [r.image_id for r in records] == list(classes)
    for record in records:
        assert record.class_ids == tuple(sorted(set(classes[record.image_id])))
        assert (record.height, record.width) == (40, 48)
        assert record.label_path.parent.name == "SegmentationClassAug"
    assert [r.label_path.parent.name for r in voc_records(root, "val")] == ["SegmentationClass"] * 2
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[14] == "person"


def test_grayscale_and_cmyk_jpegs_load_as_rgb(voc_root):
    root, _ = voc_root
    records = voc_records(root, "train")
    assert [Image.open(r.image_path).mode for r in records] == MODES
    for record in records:
        image = load_image(record.image_path)
        assert image.shape == (3, 40, 48) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_a_mask_of_another_size_is_reported_by_name(voc_root):
    root, _ = voc_root
    _scene(root / "JPEGImages" / "2008_000001.jpg", root / "SegmentationClass" / "2008_000001.png", [3],
           mask_size=(40, 50))
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000000\n2008_000001\n")
    with pytest.raises(UserError) as error:
        voc_records(root, "train")
    assert str(error.value) == f"{root}/SegmentationClass/2008_000001.png: mask is 50x40 but {root}/JPEGImages/2008_000001.jpg is 48x40"


def test_missing_voc_pieces_are_one_clear_line(voc_root, tmp_path):
    root, _ = voc_root
    with pytest.raises(UserError, match=r"nowhere: not a VOC 2012 root \(no JPEGImages/; expected VOCdevkit/VOC2012\)"):
        voc_records(tmp_path / "nowhere", "train")
    with pytest.raises(UserError, match=r"ImageSets/Segmentation/trainval_aug.txt: split list missing"):
        voc_records(root, "trainval_aug")
    (root / "SegmentationClassAug").rename(root / "elsewhere")
    with pytest.raises(UserError, match=r"SegmentationClassAug: mask folder missing \(split train_aug reads its masks there\)"):
        voc_records(root, "train_aug")


def test_coco_reads_voc_style_masks_with_80_classes(tmp_path):
    for folder in ("images/train2014", "masks/train2014"):
        (tmp_path / folder).mkdir(parents=True)
    wanted = {"COCO_train2014_000000000009": [1, 80], "COCO_train2014_000000000025": [25], "COCO_train2014_000000000030": []}
    for i, (image_id, ids) in enumerate(wanted.items()):
        _scene(tmp_path / "images/train2014" / f"{image_id}.jpg", tmp_path / "masks/train2014" / f"{image_id}.png", ids,
               mode=MODES[i + 1])
    records = coco_records(tmp_path, "train2014")
    assert {r.image_id: list(r.class_ids) for r in records} == wanted
    with pytest.raises(UserError, match=r"masks/val2014: mask folder missing"):
        coco_records(tmp_path, "val2014")
