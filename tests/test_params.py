import copy
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_stage
from pipeline.config import compose
from pipeline.errors import UserError
from pipeline.params import load_params, validate


def test_committed_params_yaml_is_conf_composed():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == compose(conf_dir=REPO / "conf")


def test_committed_params_are_valid(base_params):
    params = validate(base_params)
    assert params.dataset.class_names[:3] == ["boat", "train", "plane"]
    assert params.clip.source == "tiny"


def test_overrides_and_group_switch_compose():
    raw = compose(["dataset.cooccurrence=0.5", "clip=vit_b32"], conf_dir=REPO / "conf")
    params = validate(raw)
    assert params.dataset.cooccurrence == 0.5
    assert params.clip.source == "pretrained" and params.clip.model_name.startswith("ViT-B-32")


def _error(raw) -> str:
    with pytest.raises(UserError) as info:
        validate(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_is_named(base_params):
    raw = copy.deepcopy(base_params)
    raw["dataset"]["coocurrence"] = 0.5
    assert _error(raw) == "params.yaml: dataset.coocurrence: unknown key"


def test_string_where_a_number_belongs_is_named(base_params):
    raw = copy.deepcopy(base_params)
    raw["clip"]["train"]["lr"] = "1e-3"  # YAML 1.1 reads this as a string
    assert _error(raw) == "params.yaml: clip.train.lr: expected a number, got '1e-3'"
    raw = copy.deepcopy(base_params)
    raw["dataset"]["num_train"] = "many"
    assert _error(raw) == "params.yaml: dataset.num_train: expected an integer, got 'many'"


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("dataset", "cooccurrence", 1.5, "dataset.cooccurrence: Input should be less than or equal to 1"),
        ("dataset", "min_objects", 4, "min_objects (4) is larger than max_objects (3)"),
        ("dataset", "object_scale", 3.0, "dataset.object_scale: Input should be less than or equal to 2.8"),
        ("dataset", "prompt_template", "a photo", "prompt_template needs a '{}'"),
        ("dataset", "backgrounds", ["water", "sky"], "context backgrounds"),
        ("tracking", "experiment", 3, "tracking.experiment: expected a string, got 3"),
    ],
)
def test_out_of_range_and_inconsistent_values(base_params, section, key, value, expected):
    raw = copy.deepcopy(base_params)
    raw[section][key] = value
    assert expected in _error(raw)


def test_an_object_ramp_that_does_not_rise_is_named(base_params):
    raw = copy.deepcopy(base_params)
    raw["clip"]["train"]["object_ramp"] = [0.7, 0.2]
    assert "object_ramp [0.7, 0.2]: the first share must be below the second" in _error(raw)
    raw["clip"]["train"]["object_ramp"] = [0.2]
    assert "clip.train.object_ramp" in _error(raw)


def test_missing_section_and_unknown_group(base_params):
    raw = copy.deepcopy(base_params)
    del raw["tracking"]
    assert _error(raw) == "params.yaml: tracking: missing key"
    raw = copy.deepcopy(base_params)
    raw["clip"]["source"] = "magic"
    assert "clip:" in _error(raw) and "magic" in _error(raw)


def test_bad_yaml_file_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("dataset: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("dataset:\n  seed: 1\n   bad: indent\n")
    with pytest.raises(UserError, match=r"params.yaml: not valid YAML at line 3, column 7 \(mapping values are not allowed here\)"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("name, ok", [("..", False), (".", False), (".hidden", False), ("a/b", False), ("run-2.b_3", True)])
def test_a_sweep_name_is_a_plain_folder_name(base_params, name, ok):
    base_params["sweep"]["name"] = name
    if ok:
        validate(base_params)
    else:
        with pytest.raises(UserError, match="sweep.name"):
            validate(base_params)


def test_stage_stops_on_bad_params_before_writing(tmp_path, base_params, mlflow_uri):
    raw = copy.deepcopy(base_params)
    raw["dataset"]["num_val"] = "two hundred"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = run_stage("prepare_data", tmp_path, mlflow_uri)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: params.yaml: dataset.num_val: expected an integer, got 'two hundred'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_clims_compose_check_and_validate():
    check = subprocess.run([sys.executable, "-m", "pipeline.cli", "compose", "--check"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "compose", "--check", "dataset.num_train=lots"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: conf/: dataset.num_train: expected an integer, got 'lots'"


def test_camera_ready_group_composes_and_validates():
    params = validate(compose(["clims_loss=camera_ready", "backbone=resnet50"], conf_dir=REPO / "conf"))
    assert params.clims_loss.variant == "camera_ready" and params.clims_loss.class_backgrounds["boat"] == ["water"]
    assert params.backbone.strides == [2, 2, 2, 1]
    parts = validate(compose(["clims_loss=camera_ready", "dataset=synthetic_parts"], conf_dir=REPO / "conf"))
    assert parts.clims_loss.class_backgrounds == params.clims_loss.class_backgrounds


def test_camera_ready_on_voc_takes_the_reference_words():
    voc = validate(compose(["dataset=voc12", "clims_loss=camera_ready"], conf_dir=REPO / "conf"))
    loss = voc.clims_loss
    assert (loss.weights.otm, loss.weights.btm, loss.weights.cbs, loss.weights.reg) == (10.0, 25.0, 29.5, 1.15)
    assert loss.class_backgrounds == {"boat": ["river", "water", "lake", "sea", "building"],
                                      "train": ["railroad", "railway", "branches", "tree"]}
    assert loss.class_weights == {"sofa": 3.0, "diningtable": 3.0, "chair": 3.0}
    assert (loss.clip_input, loss.score) == ("clip", "cosine")
    assert voc.dataset.prompt_template.format(voc.dataset.prompt_names[10]) == "a photo of diningtable"
    assert voc.dataset.prompt_names[14] == "person"
    improved = validate(compose(["dataset=voc12"], conf_dir=REPO / "conf"))  # untouched without the variant
    assert improved.dataset.prompt_template == "a photo of {}." and improved.clims_loss.class_weights is None


def test_camera_ready_on_a_dataset_without_its_words_is_refused():
    raw = compose(["dataset=coco14", "clims_loss=camera_ready"], conf_dir=REPO / "conf")
    assert "conf/clims_vocab/camera_ready_<dataset>.yaml" in _error(raw)


@pytest.mark.parametrize("section, key, value, message", [
    ("train_clims", "batch_size", 15, "train_clims.batch_size: 15 does not split over distributed.num_workers=2"),
    ("clims_loss", "class_backgrounds", {"ship": ["water"]}, "clims_loss.class_backgrounds.ship: not a class of the dataset"),
    ("clims_loss", "class_backgrounds", {"boat": ["ocean"]}, "clims_loss.class_backgrounds.boat: ['ocean'] not in the background prompts"),
    ("backbone", "widths", [32, 64], "backbone: widths: small_resnet needs 4 values"),
    ("clims_loss", "tau", "high", "clims_loss.tau"),
    ("clims_loss", "class_weights", {"chair": 3.0}, "clims_loss.class_weights: ['chair'] not classes of the dataset"),
    ("clims_loss", "class_weights", {"boat": 0.0}, "clims_loss.class_weights.boat"),
    ("train_cam", "schedule", "step", "train_cam.schedule"),
])
def test_cam_sections_are_checked(base_params, section, key, value, message):
    raw = copy.deepcopy(base_params)
    raw["distributed"]["num_workers"] = 2
    raw[section][key] = value
    assert message in _error(raw)


def test_camera_ready_without_class_prompts_is_refused(base_params):
    raw = copy.deepcopy(base_params)
    raw["clims_loss"]["variant"] = "camera_ready"
    assert "class_backgrounds: the camera_ready variant needs" in _error(raw)


def test_real_dataset_groups_carry_the_reference_settings():
    voc = validate(compose(["dataset=voc12"], conf_dir=REPO / "conf"))
    assert (voc.clip.model_name, voc.backbone.name, voc.backbone.weights) == ("ViT-B-32-quickgelu", "resnet50", "weights/resnet50-imagenet.pth")
    assert (voc.dataset.train_split, voc.dataset.eval_split, voc.dataset.val_split) == ("train_aug", "train", "val")
    assert voc.dataset.prompt_names[14] == "player" and voc.dataset.class_names[14] == "person"
    assert len(voc.dataset.background_prompt_names) == 10 and "railroad" in voc.dataset.background_prompt_names
    assert (voc.train_cam.epochs, voc.train_cam.crop_size, voc.train_clims.epochs, voc.train_clims.lr) == (5, 512, 15, 2.5e-4)
    assert (voc.clims_loss.tau, voc.clims_loss.score, voc.clims_loss.weights.btm) == (0.26, "cosine", 24.0)
    assert (voc.make_sem_seg.exp_times, voc.train_irn.features_from, voc.train_seg.loss) == (8, "backbone", "balanced")
    coco = validate(compose(["dataset=coco14", "clip=rn50x4"], conf_dir=REPO / "conf"))
    assert len(coco.dataset.classes) == 80 and len(coco.dataset.background_prompt_names) == 88
    assert coco.dataset.prompt_names[0] == "player" and coco.clip.model_name == "RN50x4-quickgelu"
    assert (coco.clims_loss.tau, coco.clims_loss.weights.otm, coco.train_clims.epochs, coco.train_clims.crop_size) == (0.285, 2.0, 8, 512)
    plumbing = validate(compose(["dataset=voc12", "check=plumbing"], conf_dir=REPO / "conf"))
    assert (plumbing.clip.source, plumbing.clip.train.steps, plumbing.backbone.name, plumbing.distributed.use_gpu) == ("tiny", 0, "small_resnet", False)


def test_parts_world_group_is_the_plain_world_with_plain_bodies_and_clutter():
    plain = compose(["dataset=synthetic"], conf_dir=REPO / "conf")
    parts = compose(["dataset=synthetic_parts"], conf_dir=REPO / "conf")
    changed = {(section, key) for section in parts for key in parts[section] if parts[section][key] != plain[section][key]}
    assert changed == {("dataset", "plain_bodies"), ("dataset", "clutter")}
    world = validate(parts)
    assert (world.dataset.plain_bodies, world.dataset.clutter, world.clip.train.part_views) == (True, 0.5, 0.1)


def test_large_parts_world_group_is_the_parts_world_with_objects_twice_the_size():
    parts = compose(["dataset=synthetic_parts"], conf_dir=REPO / "conf")
    large = compose(["dataset=synthetic_parts_large"], conf_dir=REPO / "conf")
    assert {(s, k) for s in large for k in large[s] if large[s][k] != parts[s][k]} == {("dataset", "object_scale")}
    assert validate(large).dataset.object_scale == 2.0 and validate(parts).dataset.object_scale == 1.0
    assert compose([], conf_dir=REPO / "conf") == large  # the default world


@pytest.mark.parametrize("overrides, message", [
    (["clip=tiny"], "clip.train.steps: the tiny CLIP learns from renders of the synthetic world; with dataset voc12 use a pretrained"),
    (["clims_loss.tau=auto"], "clims_loss.tau: 'auto' reads the synthetic world's CLIP report; give dataset voc12 a number"),
    (["dataset.classes=[]"], "dataset.classes: List should have at least 2 items"),
])
def test_real_dataset_refuses_what_only_the_synthetic_world_has(overrides, message):
    assert message in _error(compose(["dataset=voc12", *overrides], conf_dir=REPO / "conf"))
