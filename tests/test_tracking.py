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
