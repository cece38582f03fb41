"""MLflow tracking shared by every stage: one parent run per pipeline run, one child per stage.

Stages run as separate processes under `dvc repro`, so they find their common parent by a
key: $CLIMS_PIPELINE_RUN when set, otherwise a hash of what defines the run (git commit, the
uncommitted diff of code and config, params.yaml and the DVC experiment name). The store is a
SQLite file in the repository unless params or $MLFLOW_TRACKING_URI name another: on a cluster,
or for many experiments at once, a tracking server (`mlflow server`, tracking.uri http://...).
"""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pipeline.layout import git, repo_root
from pipeline.params import PARAMS_FILE

PIPELINE_KEY_TAG = "clims.pipeline_key"
DB_FILE = "mlflow.db"
RUN_DEFINING_PATHS = ("pipeline", "stages", "conf", "dvc.yaml", "pyproject.toml")
ARTIFACT_DIR = "mlartifacts"


def tracking_uri(configured: str | None = None) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root() / DB_FILE}"


def is_server(uri: str) -> bool:
    """A tracking server (`mlflow server`), not a store this process opens itself."""
    return uri.startswith(("http://", "https://"))


def pipeline_key() -> str:
    if os.environ.get("CLIMS_PIPELINE_RUN"):
        return os.environ["CLIMS_PIPELINE_RUN"]
    digest = hashlib.sha256()
    digest.update(git("rev-parse", "HEAD").encode())
    # Only what defines the run: stage outputs (dvc.lock, metrics/) change while it runs.
    digest.update(git("diff", "HEAD", "--", *RUN_DEFINING_PATHS).encode())
    params = Path(PARAMS_FILE)
    digest.update(params.read_bytes() if params.is_file() else b"")
    digest.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return digest.hexdigest()[:16]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> {'a.b.c': 'value'} for MLflow (lists kept as one value)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


class StageRun:
    """The MLflow child run of one stage, under the pipeline's parent run."""

    def __init__(self, client, run_id: str, parent_id: str | None = None):
        self.client, self.run_id, self.parent_id = client, run_id, parent_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_headline(self, record: str, metrics: Mapping) -> None:
        """The record's headline figures on the parent run too: pipeline runs compare by them."""
        from pipeline.headline import headline

        figures = headline(record, metrics)
        if figures and self.parent_id:
            StageRun(self.client, self.parent_id).log_metrics(figures)

    def log_image(self, image: np.ndarray, name: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)


def experiment_id(client, name: str) -> str:
    """The experiment's id, created if new: its artifacts beside a local store, in the repository;
    a tracking server's (http://...) where the server keeps them, so every machine can read them."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if is_server(client.tracking_uri):
        return client.create_experiment(name)
    return client.create_experiment(name, artifact_location=(repo_root() / ARTIFACT_DIR).as_uri())


def log_params(client, run_id: str, tree: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flatten(tree).items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


def _parent_run_id(client, experiment_id: str, key: str, tags: dict[str, str], params: dict) -> str:
    """The pipeline run's parent: found by its key, or created with every param (for comparing runs)."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline-{key[:8]}"
    run_id = client.create_run(experiment_id, run_name=name, tags={PIPELINE_KEY_TAG: key, **tags}).info.run_id
    log_params(client, run_id, params)
    return run_id


@contextmanager
def stage_run(stage: str, params, sections: tuple[str, ...]) -> Iterator[StageRun]:
    """Open the stage's child run under the pipeline's parent; log the given params sections."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(params.tracking.uri))
    experiment = experiment_id(client, params.tracking.experiment)
    commit = git("rev-parse", "HEAD").strip()
    tags = {"git.commit": commit or "unknown", "dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace")}
    if git("status", "--porcelain", "--untracked-files=no", "--", *RUN_DEFINING_PATHS, PARAMS_FILE).strip():
        tags["git.dirty"] = "true"
    dumped = params.model_dump()
    parent = _parent_run_id(client, experiment, pipeline_key(), tags, dumped)
    run = client.create_run(
        experiment, run_name=stage, tags={"mlflow.parentRunId": parent, "clims.stage": stage, **tags}
    )
    log_params(client, run.info.run_id, {section: dumped[section] for section in sections})
    try:
        yield StageRun(client, run.info.run_id, parent)
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
