"""The default tiny CLIP meets the goals it is trained for (about 4 minutes on 2 cores)."""
import json
import shutil

import pytest

from conftest import REPO, run_stage


@pytest.mark.slow
def test_default_tiny_clip_meets_its_goals(tmp_path, mlflow_uri):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = run_stage("prepare_clip", tmp_path, mlflow_uri, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics" / "clip.json").read_text())
    for key in ("object_top1", "object_top1_masked", "background_top1", "background_top1_masked"):
        assert metrics[key] >= 0.90, key
    assert metrics["context_margin"] >= 0.15
    # 0.38 took 2400 steps; the 1000-step CLIP's 0.20 trains CLIMS CAMs as well (61.1 vs 58.4 mIoU
    # on 1000 images), so the default buys the shorter training.
    assert metrics["hole_margin"] >= 0.15
