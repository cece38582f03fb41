"""The default tiny CLIP meets the goals it is trained for (about 4 minutes on 2 cores)."""
import json

import pytest
import yaml

from conftest import REPO, run_stage


@pytest.mark.slow
def test_default_tiny_clip_meets_its_goals(tmp_path, mlflow_uri):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["clip"]["shipped"] = False  # train it, rather than take over the shipped one
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage("prepare_clip", tmp_path, mlflow_uri, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics" / "clip.json").read_text())
    # Probed on the data's world (objects of 28-44 px, 85 % of them on their context): object top1
    # 0.85 for a tight crop (purity lowers a crop that shows ground; 0.997 for the object masked),
    # context margin 0.51, hole margin 0.29, part margin 0.42 (an object whole over its part alone,
    # which counts in part from 10 % of the object visible), body margin 0.19 (a body left behind is
    # still seen). On its own renders the same CLIP gives 0.99, 0.60, 0.44, 0.43 and 0.28.
    assert metrics["object_top1"] >= 0.8
    for key in ("object_top1_masked", "background_top1", "background_top1_masked"):
        assert metrics[key] >= 0.90, key
    assert metrics["context_margin"] >= 0.3
    assert metrics["hole_margin"] >= 0.2
    assert metrics["part_margin"] >= 0.3 and metrics["body_margin"] >= 0.15
