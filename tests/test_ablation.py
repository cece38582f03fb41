"""benchmarks/ablation.py's tables: the sequential gains and the leave-one-out shares, paired per seed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import ablation  # noqa: E402
from ablation import earlier_baseline, print_table  # noqa: E402


def _cam(miou: float, leak: float) -> dict:
    return {"cam": {"miou": miou, "context_leak": leak}}


def test_leave_one_out_share_is_full_minus_the_run_without_the_term(capsys):
    runs = {
        "seed0/baseline": _cam(40.0, 30.0), "seed1/baseline": _cam(44.0, 28.0),
        "seed0/full": _cam(60.0, 10.0), "seed1/full": _cam(62.0, 6.0),
        "seed0/no_btm": _cam(58.0, 8.0), "seed1/no_btm": _cam(61.0, 5.0),
    }
    print_table(runs, [0, 1], ["full", "no_btm"])
    lines = capsys.readouterr().out.splitlines()
    # full over baseline: +20 and +18, paired; population std 1.0, worst +18
    assert "| full CAM | 61.0 ± 1.0 (worst 60.0) | 19.0 ± 1.0 (worst 18.0) | 8.0 ± 2.0 (worst 10.0) % |" in lines
    # BTM's share: 60 - 58 and 62 - 61
    assert "| L_BTM | 59.5 ± 1.5 (worst 58.0) | 1.5 ± 0.5 (worst 1.0) | 6.5 ± 1.5 (worst 8.0) % |" in lines
    assert not any(line.startswith("| no_btm CAM") for line in lines)  # not a row of the sequence


def _by_class(miou: float, leak: dict, iou: dict) -> dict:
    return {"cam": {"miou": miou, "context_leak": 0.0, "context_leak_by_class": leak, "iou_by_class": iou}}


def test_a_rows_gain_is_split_into_the_classes_that_kept_their_context_state_and_the_moves(capsys):
    runs = {
        # seed 0: the boat gives up its water (moved), the car stays off its road and gains 6
        "seed0/baseline": _by_class(40.0, {"boat": 80.0, "car": 10.0}, {"background": 80.0, "boat": 30.0, "car": 50.0}),
        "seed0/otm": _by_class(45.0, {"boat": 10.0, "car": 5.0}, {"background": 83.0, "boat": 60.0, "car": 56.0}),
        # seed 1: the car takes its road (moved), the boat stays off its water and gains 4
        "seed1/baseline": _by_class(42.0, {"boat": 20.0, "car": 10.0}, {"background": 82.0, "boat": 40.0, "car": 50.0}),
        "seed1/otm": _by_class(41.0, {"boat": 30.0, "car": 60.0}, {"background": 77.0, "boat": 44.0, "car": 20.0}),
    }
    print_table(runs, [0, 1], ["otm"])
    lines = capsys.readouterr().out.splitlines()
    # the background: +3 (seed 0), -5 (seed 1, the car's road taken from it)
    assert "| otm CAM | 5.0 ± 1.0 (worst 4.0) | -1.0 ± 4.0 (worst -5.0) | seed 0: boat off; seed 1: car onto |" in lines


def _study(folder, name: str, runs: dict, overrides: list[str], **clip) -> None:
    clip = {"train": {"seed": 0}, "train_final_loss": 0.09, **clip}
    (folder / f"{name}.json").write_text(json.dumps({"clip": clip, "overrides": overrides, "runs": runs}))


def test_reprint_pools_a_study_run_in_parts_and_refuses_two_studies(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablation, "RESULTS", tmp_path)
    # seeds 0 and 1 in one file, seed 2 in another, seed 1's baseline in both (shared baselines)
    _study(tmp_path, "first", {"seed0/baseline": _cam(40.0, 30.0), "seed0/otm": _cam(50.0, 10.0),
                               "seed1/baseline": _cam(44.0, 28.0), "seed1/otm": _cam(48.0, 12.0)}, ["a=1"])
    _study(tmp_path, "second", {"seed1/baseline": _cam(44.0, 28.0), "seed2/baseline": _cam(42.0, 26.0),
                                "seed2/otm": _cam(55.0, 8.0)}, ["a=1"])
    ablation.reprint(["first", "second"])
    lines = capsys.readouterr().out.splitlines()
    # gains +10, +4, +13 over three seeds: mean 9, population std sqrt(14)
    assert "| otm CAM | 51.0 ± 2.9 (worst 48.0) | 9.0 ± 3.7 (worst 4.0) | 10.0 ± 1.6 (worst 12.0) % |" in lines
    _study(tmp_path, "other", {"seed3/baseline": _cam(40.0, 30.0), "seed3/otm": _cam(50.0, 10.0)}, ["a=2"])
    with pytest.raises(SystemExit, match=r"other.json: its runs read other overrides than first.json's \(\('a=1',\) vs \('a=2',\)\)"):
        ablation.reprint(["first", "other"])
    _study(tmp_path, "another_clip", {}, ["a=1"], train={"seed": 1})
    with pytest.raises(SystemExit, match="another_clip.json: its CLIP differs from first.json's"):
        ablation.reprint(["first", "another_clip"])
    _study(tmp_path, "clash", {"seed1/baseline": _cam(45.0, 28.0)}, ["a=1"])
    with pytest.raises(SystemExit, match="clash.json: its seed1/baseline differs"):
        ablation.reprint(["first", "clash"])


def test_a_results_name_with_a_path_stops_before_anything_runs():
    # a path for --out would write outside benchmarks/results (or fail after an hour of runs)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--out", "/tmp/ablation"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "'/tmp/ablation': give a bare name; results go to benchmarks/results/<name>.json" in result.stderr
    assert "run folders" not in result.stdout


def test_an_earlier_baseline_is_reused_only_when_trained_with_the_same_params(tmp_path, base_params):
    folder = tmp_path / "seed0-baseline"
    (folder / "metrics").mkdir(parents=True)
    earlier = {**base_params, "distributed": {**base_params["distributed"], "storage": "/elsewhere/ray"}}
    (folder / "params.yaml").write_text(yaml.safe_dump(earlier))
    with pytest.raises(SystemExit, match="metrics/cam_baseline.json is missing"):
        earlier_baseline(folder, base_params)
    (folder / "metrics" / "cam_baseline.json").write_text("{}")
    assert earlier_baseline(folder, base_params) == folder  # where Ray kept its checkpoints does not matter
    other_seed = {**base_params, "train_cam": {**base_params["train_cam"], "seed": 7}}
    with pytest.raises(SystemExit, match=r"trained with other params \(train_cam\)"):
        earlier_baseline(folder, other_seed)
    # What only CLIMS reads (the CLIP, its losses) may differ: the baseline never saw it.
    other_clims = {**base_params, "clims_loss": {**base_params["clims_loss"], "weights": {"otm": 1.0}},
                   "clip": {**base_params["clip"], "model_name": "another"}}
    assert earlier_baseline(folder, other_clims) == folder
    other_world = {**base_params, "dataset": {**base_params["dataset"], "seed": 7}}
    with pytest.raises(SystemExit, match=r"trained with other params \(dataset\)"):
        earlier_baseline(folder, other_world)


def test_reprint_pools_runs_without_cbs_across_taus_but_not_runs_with_it(tmp_path, monkeypatch, capsys):
    """tau gates L_CBS only: OTM and OTM+BTM runs from a study at another tau are the same runs.
    The CLIP is compared by how it was trained, not by its text overrides or by its figures,
    which change with the world it was probed on."""
    monkeypatch.setattr(ablation, "RESULTS", tmp_path)
    baselines = {f"seed{s}/baseline": _cam(40.0 + s, 30.0) for s in (0, 1)}
    _study(tmp_path, "sequence", {**baselines, "seed0/otm": _cam(50.0, 10.0), "seed1/otm": _cam(49.0, 12.0)},
           ["clip.train.purity=0.6"], eval_context_pairs=9)
    _study(tmp_path, "cbs_at_tau", {**baselines, "seed0/otm_btm_cbs": _cam(60.0, 5.0), "seed1/otm_btm_cbs": _cam(57.0, 7.0)},
           ["clims_loss.tau=0.37"], eval_context_pairs=283, weights_sha256="ab")
    ablation.reprint(["sequence", "cbs_at_tau"])
    lines = capsys.readouterr().out.splitlines()
    # OTM+BTM+CBS over OTM: +10 and +8
    assert "| otm_btm_cbs CAM | 58.5 ± 1.5 (worst 57.0) | 9.0 ± 1.0 (worst 8.0) | 6.0 ± 1.0 (worst 7.0) % |" in lines
    _study(tmp_path, "full_at_auto", {**baselines, "seed0/full": _cam(61.0, 4.0), "seed1/full": _cam(58.0, 6.0)}, [])
    with pytest.raises(SystemExit, match=r"full_at_auto.json: its runs read other overrides than cbs_at_tau.json's"):
        ablation.reprint(["sequence", "cbs_at_tau", "full_at_auto"])
    _study(tmp_path, "other_weights", {}, ["clims_loss.tau=0.37"], weights_sha256="cd")
    with pytest.raises(SystemExit, match="other_weights.json: its CLIP differs from cbs_at_tau.json's"):
        ablation.reprint(["cbs_at_tau", "other_weights"])


def test_a_clip_override_unlike_the_sources_clip_stops_before_anything_runs(tmp_path):
    # the runs share --source's CLIP: an override that differs would change only what the results say
    for shared in ablation.SHARED:
        (tmp_path / shared).mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    purity = yaml.safe_load((REPO / "params.yaml").read_text())["clip"]["train"]["purity"]
    command = [sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--source", str(tmp_path), "--seeds", "0", "--variants", "otm"]
    result = subprocess.run([*command, "-S", f"clip.train.purity={purity / 2}"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and f"-S clip.*: the runs share the CLIP of {tmp_path}" in result.stderr
    assert "run folders" not in result.stdout
