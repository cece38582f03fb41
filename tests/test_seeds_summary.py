"""benchmarks/seeds.py --summarize: one table over studies run in parts (and the committed run)."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from seeds import summarize  # noqa: E402

from pipeline.headline import check_claims  # noqa: E402


def _run(seed: int, baseline: float, clims: float, leak: float) -> dict:
    figures = {"cam_baseline.miou": baseline, "cam_baseline.context_leak": 30.0,
               "cam_clims.miou": clims, "cam_clims.context_leak": leak}
    return {"seed": seed, "cpu": "test cpu", "figures": figures, "claims": check_claims(figures)}


def _study(path, runs, vary="all", overrides=()):
    path.write_text(json.dumps({"commit": "0" * 40, "vary": vary, "overrides": list(overrides), "runs": runs}))
    return path


def test_summary_over_two_files_and_the_committed_metrics(tmp_path, capsys):
    first = _study(tmp_path / "a.json", [_run(1, 40.0, 50.0, 10.0), _run(2, 44.0, 47.0, 20.0)])
    second = _study(tmp_path / "b.json", [_run(3, 42.0, 53.0, 5.0)])
    committed = tmp_path / "metrics"
    committed.mkdir()
    (committed / "cam_baseline.json").write_text(json.dumps({"miou": 42.0, "context_leak": 30.0}))
    (committed / "cam_clims.json").write_text(json.dumps({"miou": 58.0, "context_leak": 9.0}))
    (committed / "train_clims.json").write_text(json.dumps({"tau": 0.41}))  # a figure the older runs lack

    report = summarize([first, second], committed)

    clims, leak = report["summary"]["cam_clims.miou"], report["summary"]["cam_clims.context_leak"]
    assert clims["runs"] == 4 and clims["mean"] == pytest.approx(52.0) and clims["worst"] == 47.0
    assert clims["std"] == pytest.approx((66 / 4) ** 0.5)  # deviations 6, -2, -5, 1: population std
    assert leak["worst"] == 20.0  # the highest leak is the worst
    # seed 2 gains 3 points only and leaks less than its baseline: one claim fails there
    held = report["claims_held"]
    assert held["CLIMS CAM >= baseline CAM + 5 mIoU"] == 3 and held["CLIMS context leak < baseline's"] == 4
    out = capsys.readouterr().out
    assert "seed 0: metrics/ (committed), processor not recorded" in out and "seed 3: b.json @ 00000000, test cpu" in out
    assert report["summary"]["train_clims.tau"]["runs"] == 1
    assert [" ".join(line.split()) for line in out.splitlines() if line.startswith("train_clims.tau")] == [
        "train_clims.tau 0.41 0.00 0.41 on 1 of them"]


def test_studies_of_other_seeds_or_settings_do_not_mix(tmp_path):
    clip_only = _study(tmp_path / "clip.json", [_run(1, 40.0, 50.0, 10.0)], vary="clip")
    every_seed = _study(tmp_path / "all.json", [_run(1, 40.0, 50.0, 10.0)])
    with pytest.raises(SystemExit, match="not one study: clip.json varies clip seeds .*; all.json varies all seeds"):
        summarize([clip_only, every_seed])
    with pytest.raises(SystemExit, match="missing.json: no such results file"):
        summarize([every_seed, tmp_path / "missing.json"])
