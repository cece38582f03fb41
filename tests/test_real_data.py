"""The VOC 2012 and COCO 2014 readers on miniature trees in the standard layouts."""
import pytest
import yaml
from PIL import Image

from conftest import REPO, run_stage
from miniature_data import MODES, scene, voc_tree
from pipeline.data.images import load_image
from pipeline.config import compose
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import prepare_splits
from pipeline.data.real import VOC_CLASSES, coco_records, read_splits, voc_records
from pipeline.errors import UserError
from pipeline.params import validate


@pytest.fixture
def voc_root(tmp_path):
    return voc_tree(tmp_path)


def test_voc_splits_read_with_labels_from_the_masks(voc_root):
    root, classes = voc_root
    records = voc_records(root, "train_aug")
    assert [r.image_id for r in records] == list(classes)
    for record in records:
        assert record.class_ids == tuple(sorted(set(classes[record.image_id])))
        assert (record.height, record.width) == (40, 48)
        assert record.label_path.parent.name == "SegmentationClassAug"
    assert [r.label_path.parent.name for r in voc_records(root, "val")] == ["SegmentationClass"] * 2
    assert [r.image_id for r in voc_records(root, "train_aug", limit=3)] == list(classes)[:3]
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
    scene(root / "JPEGImages" / "2008_000001.jpg", root / "SegmentationClass" / "2008_000001.png", [3],
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
        scene(tmp_path / "images/train2014" / f"{image_id}.jpg", tmp_path / "masks/train2014" / f"{image_id}.png", ids,
               mode=MODES[i + 1])
    records = coco_records(tmp_path, "train2014")
    assert {r.image_id: list(r.class_ids) for r in records} == wanted
    with pytest.raises(UserError, match=r"masks/val2014: mask folder missing"):
        coco_records(tmp_path, "val2014")

    # dataset=coco14 scores the CAMs on its training split itself; val2014 scores the segmentation
    for folder in ("images/val2014", "masks/val2014"):
        (tmp_path / folder).mkdir(parents=True)
    scene(tmp_path / "images/val2014/COCO_val2014_000000000042.jpg", tmp_path / "masks/val2014/COCO_val2014_000000000042.png", [3, 44])
    params = validate(compose(["dataset=coco14", f"dataset.root={tmp_path}", "check=plumbing"], conf_dir=REPO / "conf"))
    (tmp_path / "data").mkdir()
    metrics = prepare_splits(params.dataset, tmp_path / "data", tmp_path / "data")
    assert {k: metrics[f"{k}_images"] for k in ("train", "train_eval", "val")} == {"train": 3, "train_eval": 3, "val": 1}
    assert [list(r.class_ids) for r in read_manifest(tmp_path / "data/val.parquet")] == [[3, 44]]
    assert params.dataset.class_names[44 - 1] == "knife" and params.dataset.prompt_names[0] == "player"


def _voc_params(workdir, root, *overrides):
    workdir.mkdir()
    raw = compose(["dataset=voc12", f"dataset.root={root}", *overrides], conf_dir=REPO / "conf")
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("damage, message", [
    ("root", "{root}: not a VOC 2012 root (no JPEGImages/; expected VOCdevkit/VOC2012)"),
    ("SegmentationClassAug", "{root}/SegmentationClassAug: mask folder missing (split train_aug reads its masks there)"),
])
def test_prepare_data_on_a_broken_voc_tree_is_one_line_and_writes_nothing(tmp_path, mlflow_uri, damage, message):
    import shutil

    root, _ = voc_tree(tmp_path / "voc")
    shutil.rmtree(root if damage == "root" else root / damage)
    _voc_params(tmp_path / "work", root, "check=plumbing")
    result = run_stage("prepare_data", tmp_path / "work", mlflow_uri)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: " + message.format(root=root)
    assert not (tmp_path / "work" / "data").exists() and not (tmp_path / "work" / "metrics").exists()


def test_voc_with_the_reference_clip_names_the_missing_weights_file(tmp_path, mlflow_uri):
    root, _ = voc_tree(tmp_path / "voc")
    _voc_params(tmp_path / "work", root)
    result = run_stage("prepare_clip", tmp_path / "work", mlflow_uri)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: weights/clip/ViT-B-32-openai.pt: CLIP weights file not found "
        "(clip.weights: an open_clip checkpoint for ViT-B-32-quickgelu)")
    assert not (tmp_path / "work" / "artifacts").exists()


def test_prepare_data_lists_a_voc_tree_into_three_manifests(tmp_path):
    root, classes = voc_tree(tmp_path / "voc")
    params = validate(compose(["dataset=voc12", f"dataset.root={root}", "check=plumbing"], conf_dir=REPO / "conf"))
    (tmp_path / "data").mkdir()  # the stage's atomic folder
    metrics = prepare_splits(params.dataset, tmp_path / "data", tmp_path / "data")
    assert {k: metrics[f"{k}_images"] for k in ("train", "train_eval", "val")} == {"train": 12, "train_eval": 4, "val": 2}
    train, scored = read_manifest(tmp_path / "data/train.parquet"), read_manifest(tmp_path / "data/train_eval.parquet")
    assert {r.image_id: list(r.class_ids) for r in train} == {i: sorted(set(c)) for i, c in classes.items()}
    assert [r.label_path.parent.name for r in scored] == ["SegmentationClass"] * 4  # the official masks score
    assert [r.image_path for r in scored] == [root / "JPEGImages" / f"{i}.jpg" for i in list(classes)[:4]]
    assert Image.open(tmp_path / "data/preview.png").size == (2 * 2 * 128, 4 * 128)  # 8 images, image | mask
    assert params.dataset.prompt_names[14] == "player" and params.dataset.class_names == list(VOC_CLASSES)


def test_evaluated_images_must_be_training_images(tmp_path):
    root, _ = voc_tree(tmp_path / "voc")
    params = validate(compose(["dataset=voc12", f"dataset.root={root}", "check=plumbing", "dataset.eval_split=val",
                               "dataset.train_split=train"], conf_dir=REPO / "conf"))
    with pytest.raises(UserError, match=r"^dataset.eval_split: 2 images of val are not in train \(first: 2007_000004\)"):
        read_splits(params.dataset)
