import yaml

from pipeline import tracking
from pipeline.params import validate


def test_stages_of_one_pipeline_run_share_a_parent(tmp_path, monkeypatch, base_params, mlflow_uri):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIMS_PIPELINE_RUN", "test-run-1")
    base_params["tracking"]["uri"] = mlflow_uri
    base_params["tracking"]["experiment"] = "tracking-test"
    params = validate(base_params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base_params))
    with tracking.stage_run("stage_a", params, sections=("dataset",)) as run:
        run.log_metrics({"acc": 0.5}, step=1)
        run.log_metrics({"acc": 0.75}, step=2)
    with tracking.stage_run("stage_b", params, sections=("clip",)) as run:
        run.log_metrics({"loss": 1.25})

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(children) == {"stage_a", "stage_b"}
    assert parents[0].data.params["clip.source"] == "tiny"  # the parent carries every param
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children.values())
    a = children["stage_a"]
    assert a.data.params["dataset.cooccurrence"] == "0.85" and "clip.source" not in a.data.params
    assert [m.value for m in client.get_metric_history(a.info.run_id, "acc")] == [0.5, 0.75]
    assert children["stage_b"].data.params["clip.train.steps"] == str(params.clip.train.steps)
    assert "git.commit" in a.data.tags and a.data.tags["dvc.experiment"] == "workspace"
    assert a.info.status == "FINISHED"

    monkeypatch.setenv("CLIMS_PIPELINE_RUN", "test-run-2")
    with tracking.stage_run("stage_a", params, sections=()):
        pass
    assert len([r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]) == 2


def test_failed_stage_is_marked_failed(tmp_path, monkeypatch, base_params, mlflow_uri):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    base_params["tracking"].update(uri=mlflow_uri, experiment="tracking-fail")
    params = validate(base_params)
    try:
        with tracking.stage_run("broken", params, sections=()):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("tracking-fail").experiment_id], "attributes.run_name = 'broken'")
    assert runs[0].info.status == "FAILED"


def test_default_uri_is_sqlite_in_the_repo(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(None) == f"sqlite:///{tracking.repo_root() / 'mlflow.db'}"
    assert tracking.tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_pipeline_runs_compare_by_their_headline_figures(tmp_path, monkeypatch, base_params, mlflow_uri):
    """Each stage puts its record's headline figures on the pipeline's parent run, so two pipeline
    runs sit side by side in one runs table; the rest stays in the stage's own run and file."""
    import json

    from mlflow import MlflowClient

    from pipeline.report import write_metrics

    monkeypatch.chdir(tmp_path)
    base_params["tracking"].update(uri=mlflow_uri, experiment="headline-test")
    params = validate(base_params)
    for key, clims_miou in (("pipeline-a", 47.5), ("pipeline-b", 55.25)):
        monkeypatch.setenv("CLIMS_PIPELINE_RUN", key)
        with tracking.stage_run("eval_cam_clims", params, sections=()) as run:
            write_metrics(run, "cam_clims", {"miou": clims_miou, "context_leak": 20.0, "iou": {"boat": 50.0}, "images": 500})
        with tracking.stage_run("train_clims", params, sections=()) as run:
            write_metrics(run, "train_clims", {"loss": 3.0})  # not a headline record

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("headline-test").experiment_id
    parents = client.search_runs([experiment], "tags.`clims.pipeline_key` LIKE 'pipeline-%'",
                                 order_by=["metrics.`cam_clims.miou` DESC"])
    parents = [run for run in parents if "mlflow.parentRunId" not in run.data.tags]
    assert [run.data.metrics for run in parents] == [
        {"cam_clims.miou": 55.25, "cam_clims.context_leak": 20.0},
        {"cam_clims.miou": 47.5, "cam_clims.context_leak": 20.0},
    ]
    assert json.loads((tmp_path / "metrics" / "cam_clims.json").read_text())["iou"] == {"boat": 50.0}


def test_claims_of_the_default_on_hand_made_figures():
    from pipeline.headline import check_claims

    figures = {"cam_baseline.miou": 41.0, "cam_baseline.context_leak": 27.9, "cam_clims.miou": 46.0,
               "cam_clims.context_leak": 17.0, "pseudo_labels.miou": 46.5, "segmentation.miou": 41.0}
    assert check_claims(figures) == {
        "CLIMS CAM >= baseline CAM + 5 mIoU": True,  # exactly 5 points
        "CLIMS context leak < baseline's": True,
        "pseudo labels > CLIMS CAM": True,
        "segmentation > baseline CAM": False,  # equal is not better
    }
    del figures["segmentation.miou"]
    figures["cam_clims.miou"], figures["cam_clims.context_leak"] = 45.9, 27.9
    assert check_claims(figures) == {
        "CLIMS CAM >= baseline CAM + 5 mIoU": False,
        "CLIMS context leak < baseline's": False,
        "pseudo labels > CLIMS CAM": True,
        "segmentation > baseline CAM": None,  # not measured yet
    }


def test_clims_report_prints_the_headline_table(tmp_path, capsys):
    import json

    import pytest

    from pipeline.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["report", "--metrics", str(tmp_path)])
    assert stopped.value.code == 2 and "no metrics yet" in capsys.readouterr().err
    (tmp_path / "cam_baseline.json").write_text(json.dumps({"miou": 41.1174, "context_leak": 27.94, "best_threshold": 0.5}))
    (tmp_path / "cam_clims.json").write_text(json.dumps({"miou": 57.46, "context_leak": 17.4, "best_threshold": 0.3,
                                                       "iou": {"boat": 1.0}}))
    (tmp_path / "ir_labels.json").write_text(json.dumps({"miou": 60.0, "coverage": 97.36}))
    (tmp_path / "train_clims.json").write_text(json.dumps({"loss": 9.3, "tau": 0.41253}))
    main(["report", "--metrics", str(tmp_path)])
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "baseline CAM (train, best threshold 0.50) 41.1 27.9 %" in lines
    assert "CLIMS CAM (train, best threshold 0.30, tau 0.413) 57.5 17.4 %" in lines
    assert "IR labels, where labelled (97.4 % of pixels) 60.0" in lines
    assert "pseudo labels (train) -" in lines
    assert "CLIMS CAM >= baseline CAM + 5 mIoU yes" in lines and "pseudo labels > CLIMS CAM -" in lines
    assert max(len(line) for line in lines) < 80  # fits a terminal
