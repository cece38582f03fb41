"""`clims sweep`'s pieces that need no Ray run: the search space, trial params, the apply command,
and the sweep section's checks. The sweep itself runs in tests/test_dvc_pipeline.py."""
import pytest
from ray import tune

from pipeline.errors import UserError
from pipeline.params import validate
from pipeline.sweep import apply_command, search_space, trial_params


def test_search_space_follows_the_params(base_params):
    params = validate(base_params)
    space = search_space(params)
    assert set(space) == {"otm", "btm", "cbs", "reg", "tau"}
    assert isinstance(space["otm"].get_sampler(), tune.search.sample.LogUniform) and space["otm"].lower == 2.0
    assert isinstance(space["tau"].get_sampler(), tune.search.sample.Uniform) and space["tau"].upper == 0.6

    base_params["sweep"]["space"]["reg"] = {"values": [0.1, 0.2]}
    assert search_space(validate(base_params))["reg"].categories == [0.1, 0.2]
    base_params["sweep"]["search"] = "grid"
    for key in ("otm", "btm", "cbs", "tau"):
        base_params["sweep"]["space"][key] = {"values": [1.0]}
    assert search_space(validate(base_params))["reg"] == {"grid_search": [0.1, 0.2]}


@pytest.mark.parametrize("change, message", [
    ({"search": "grid"}, "params.yaml: sweep: search: grid needs values (not low/high) for ['otm', 'btm', 'cbs', 'reg', 'tau']"),
    ({"grace_period": 5}, "params.yaml: sweep: grace_period: 5 is more than epochs=3"),
    ({"space": {"tau": {"low": 0.5, "high": 0.2}}}, "params.yaml: sweep.space.tau: low 0.5 must be below high 0.2"),
    ({"space": {"cbs": {"low": 0.0, "high": 1.0, "log": True}}}, "params.yaml: sweep.space.cbs: log needs a range with low > 0"),
    ({"name": "a b"}, "params.yaml: sweep.name: "),
])
def test_bad_sweep_sections_are_one_line_naming_the_key(base_params, change, message):
    for key, value in change.items():
        if key == "space":
            base_params["sweep"]["space"].update(value)
        else:
            base_params["sweep"][key] = value
    with pytest.raises(UserError) as error:
        validate(base_params)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_trial_trains_clims_with_its_weights_for_the_sweep_epochs(base_params):
    params = validate(base_params)
    config = {"otm": 3.5, "btm": 12.0, "cbs": 0.75, "reg": 0.1, "tau": 0.35}
    trial = trial_params(params, config)
    assert trial.clims_loss.weights.model_dump() == {"otm": 3.5, "btm": 12.0, "cbs": 0.75, "reg": 0.1}
    assert trial.clims_loss.tau == 0.35 and trial.train_clims.epochs == params.sweep.epochs
    assert trial.train_clims.lr == params.train_clims.lr and trial.backbone == params.backbone
    assert apply_command({**config, "otm": 3.456789}) == (
        "dvc exp run -S clims_loss.weights.otm=3.457 -S clims_loss.weights.btm=12 -S clims_loss.weights.cbs=0.75 "
        "-S clims_loss.weights.reg=0.1 -S clims_loss.tau=0.35")


def test_a_sweep_without_a_baseline_net_is_one_line_and_writes_nothing(tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "sweep", "--num-samples", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: artifacts/net_baseline: no baseline net yet; "
                                   "run `dvc repro train_cam prepare_clip` first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
