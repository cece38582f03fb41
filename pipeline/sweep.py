"""`clims sweep`: Ray Tune over the CLIMS loss weights and tau.

Each trial is a Tune function trainable that builds a Ray Train `TorchTrainer` (the Train V2
pattern) for a short CLIMS run from the baseline net, on the first `sweep.train_images` training
images; after every epoch rank 0 scores the CAMs of the last `sweep.held_images` (never trained
on), and `TuneReportCallback` hands that to Tune, where ASHA stops the weak trials. The trial
function only drives its Train run, so it takes no CPU of its own and as many trials run at once
as the cluster has room for Train runs.

MLflow: the Tune driver alone writes (MlflowTrials, a Tune callback), so concurrent trials never
race on the store: one parent run per sweep, one nested run per trial with its weights,
per-epoch figures and the last epoch's CAM overlays. The best trial's weights go to
sweeps/<name>/best.yaml with the `dvc exp run -S ...` command that applies them. A sweep that
was interrupted resumes when started again with the same name.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline import layout, tracking
from pipeline.nets.backbone import with_checked_weights
from pipeline.data.manifest import read_manifest
from pipeline.errors import UserError
from pipeline.io import atomic_path
from pipeline.params import Params, SearchDimension
from pipeline.storage import fetch_folder, join, storage_path
from pipeline.train_loop import TrainJob, absolute
from pipeline.layout import repo_root

SWEEP_DIR = "sweeps"
METRIC = "cam_miou"
SWEEP_TAG = "clims.sweep"
TRIAL_TAG = "clims.trial"
WEIGHT_KEYS = ("otm", "btm", "cbs", "reg")
TRIAL_RUN_METRICS = ("loss", "otm", "btm", "cbs", "reg", "mask_mean", "cam_miou", "cam_best_threshold", "cam_context_leak")


def sweep_dir(name: str) -> Path:
    return repo_root() / SWEEP_DIR / name


# --------------------------------------------------------------------------- the search
def dimension(dim: SearchDimension, grid: bool):
    from ray import tune

    if dim.values is not None:
        return tune.grid_search(dim.values) if grid else tune.choice(dim.values)
    return tune.loguniform(dim.low, dim.high) if dim.log else tune.uniform(dim.low, dim.high)


def search_space(params: Params) -> dict:
    cfg = params.sweep
    return {key: dimension(dim, cfg.search == "grid") for key, dim in cfg.space}


def search_algorithm(params: Params, max_concurrent: int):
    cfg = params.sweep
    if cfg.search != "optuna":  # Tune's own sampling (random draws, or every grid point), seeded
        from ray.tune.search import BasicVariantGenerator

        # given here: Tune's max_concurrent_trials does not reach a generator passed in
        return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=max_concurrent)
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.seed)
    except ImportError:
        raise UserError("sweep.search: optuna needs the optuna package (pip install optuna)") from None


def trial_params(params: Params, config: dict) -> Params:
    """The project's params with a trial's loss weights and tau, and the sweep's epoch count."""
    raw = params.model_dump()
    raw["clims_loss"]["weights"].update({k: float(config[k]) for k in WEIGHT_KEYS})
    raw["clims_loss"]["tau"] = float(config["tau"])
    raw["train_clims"]["epochs"] = params.sweep.epochs
    return Params.model_validate(raw)


def apply_command(config: dict) -> str:
    """The `dvc exp run` that trains the whole pipeline with a trial's weights."""
    sets = [f"-S clims_loss.weights.{k}={config[k]:.4g}" for k in WEIGHT_KEYS] + [f"-S clims_loss.tau={config['tau']:.4g}"]
    return "dvc exp run " + " ".join(sets)


# --------------------------------------------------------------------------- one trial (a Tune function)
def run_trial(config: dict, job: TrainJob, storage: str) -> None:
    """Tune trial: a Ray Train run of CLIMS with this trial's weights, reporting every epoch to Tune;
    `job` is the sweep's CLIMS run, which each trial gives its own params and tau."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.cam.ray_train import train_worker
    from pipeline.distributed import fit

    trial = trial_params(job.params, config)
    trial_job = job.model_copy(update={"params": trial, "tau": float(config["tau"])})
    # Named by the trial: a resumed sweep's unfinished trial continues from its last epoch.
    name = f"{trial.sweep.name}-{ray.tune.get_context().get_trial_id()}"
    result = fit(train_worker, trial_job, trial.distributed, name, storage=storage, callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


# --------------------------------------------------------------------------- MLflow, from the Tune driver
class MlflowTrials:
    """A Tune callback (see `tune_callback`) that keeps MLflow in step with the sweep."""

    def __init__(self, params: Params, storage: str):
        self.uri, self.experiment = tracking.tracking_uri(params.tracking.uri), params.tracking.experiment
        self.sweep, self.storage = params.sweep, storage
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.checkpoints: dict[str, str] = {}  # trial id -> its last checkpoint folder
        self._client = self.parent = None

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.uri)
            self.parent = self._parent_run()
        return self._client

    def _parent_run(self) -> str:
        client = self._client
        experiment = tracking.experiment_id(client, self.experiment)
        found = client.search_runs([experiment], filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep.name}' and tags.`{TRIAL_TAG}` = 'parent'")
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = client.create_run(experiment, run_name=f"sweep-{self.sweep.name}", tags={SWEEP_TAG: self.sweep.name, TRIAL_TAG: "parent"})
        tracking.log_params(client, run.info.run_id, {"sweep": self.sweep.model_dump()})
        return run.info.run_id

    def trial_run(self, trial_id: str, config: dict) -> str:
        if trial_id in self.runs:
            return self.runs[trial_id]
        client = self.client
        experiment = tracking.experiment_id(client, self.experiment)
        found = client.search_runs([experiment], filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep.name}' and tags.`{TRIAL_TAG}` = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
        else:
            run_id = client.create_run(experiment, run_name=f"trial-{trial_id}", tags={
                "mlflow.parentRunId": self.parent, SWEEP_TAG: self.sweep.name, TRIAL_TAG: trial_id}).info.run_id
            tracking.log_params(client, run_id, {k: config[k] for k in (*WEIGHT_KEYS, "tau")})
        self.runs[trial_id] = run_id
        return run_id

    def result(self, trial_id: str, config: dict, result: dict) -> None:
        run_id = self.trial_run(trial_id, config)
        step = int(result.get("epoch", 0))
        tracking.StageRun(self.client, run_id).log_metrics({k: result[k] for k in TRIAL_RUN_METRICS if k in result}, step=step)
        if result.get("checkpoint_path"):
            self.checkpoints[trial_id] = result["checkpoint_path"]

    def finish(self, trial_id: str, config: dict, status: str) -> None:
        run_id = self.trial_run(trial_id, config)
        if trial_id in self.checkpoints:  # the last epoch's overlays, kept with its checkpoint
            with tempfile.TemporaryDirectory() as folder:
                if fetch_folder(self.storage, f"{self.checkpoints[trial_id]}/overlays", Path(folder) / "overlays"):
                    tracking.StageRun(self.client, run_id).log_artifact(Path(folder) / "overlays", "overlays")
        self.client.set_terminated(run_id, status)

    def end(self, best: dict | None) -> None:
        if best is not None:
            self.client.log_metric(self.parent, f"best_{METRIC}", best[METRIC])
            for key in (*WEIGHT_KEYS, "tau"):
                self.client.set_tag(self.parent, f"best.{key}", f"{best['config'][key]:.4g}")
        self.client.set_terminated(self.parent, "FINISHED")


def tune_callback(mlflow_trials: MlflowTrials):
    """MlflowTrials as a ray.tune.Callback (built here so that importing this module needs no Ray)."""
    from ray.tune import Callback

    class Forward(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):  # the run's clock starts with the trial
            mlflow_trials.trial_run(trial.trial_id, trial.config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            mlflow_trials.result(trial.trial_id, trial.config, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            mlflow_trials.finish(trial.trial_id, trial.config, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            mlflow_trials.finish(trial.trial_id, trial.config, "FAILED")

    return Forward()


# --------------------------------------------------------------------------- the driver
def sweep_job(params: Params) -> TrainJob:
    """The CLIMS run every trial starts from (its params, the files it reads); one line naming
    what is missing."""
    needed = {"baseline net": layout.net_dir("baseline"), "CLIP": layout.CLIP_DIR, "train manifest": layout.manifest_path(layout.TRAIN)}
    for what, path in needed.items():
        if not path.exists():
            raise UserError(f"{path}: no {what} yet; run `dvc repro train_cam prepare_clip` first")
    cfg = params.sweep
    count = len(read_manifest(layout.manifest_path(layout.TRAIN)))
    if cfg.train_images + cfg.held_images > count:
        raise UserError(f"sweep.train_images + sweep.held_images = {cfg.train_images + cfg.held_images} is more than the "
                        f"{count} training images")
    params = with_checked_weights(params)  # absolute: a trial does not run in this folder
    return TrainJob(params=params, section="train_clims", manifest=absolute(layout.manifest_path(layout.TRAIN)),
                    init_net=absolute(layout.net_dir("baseline")), clip_dir=absolute(layout.CLIP_DIR),
                    train_images=cfg.train_images, held_images=cfg.held_images)


def concurrency(params: Params) -> int:
    """Train runs that fit in the cluster at once (each takes num_workers x its CPUs and GPUs)."""
    import ray

    dist = params.distributed
    free = ray.cluster_resources()
    fits = free.get("CPU", 0) // (dist.num_workers * dist.cpus_per_worker)
    if dist.use_gpu:
        fits = min(fits, free.get("GPU", 0) // dist.num_workers)
    if fits < 1:
        raise UserError(f"distributed: one trial needs {dist.num_workers} workers x {dist.cpus_per_worker} CPUs"
                        f"{' and a GPU each' if dist.use_gpu else ''}; the cluster has {dict(free)}")
    return int(fits)


def run_sweep(params: Params) -> dict:
    """Run (or resume) the sweep; write sweeps/<name>/best.yaml; returns its content."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.distributed import init_ray

    cfg = params.sweep
    job = sweep_job(params)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    init_ray(dashboard=True)
    folder = sweep_dir(cfg.name)
    # The trials' checkpoints go where every training run's go (on a cluster: shared storage)
    storage = join(storage_path(params.distributed.storage), SWEEP_DIR, cfg.name)
    # The trial only drives its Train run: no CPU of its own (Tune refuses an all-zero request,
    # hence a token of memory), so the Train workers get every CPU.
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=job, storage=storage),
                                    {"cpu": 0, "memory": 64 * 2**20})
    mlflow_trials = MlflowTrials(params, storage)
    if tune.Tuner.can_restore(str(folder / "tune")):
        print(f"resuming sweep {cfg.name} from {folder / 'tune'}")
        tuner = tune.Tuner.restore(str(folder / "tune"), trainable, resume_unfinished=True, resume_errored=True)
    else:
        at_once = concurrency(params)
        scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.epochs, grace_period=cfg.grace_period,
                                  reduction_factor=cfg.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(params),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=cfg.num_samples, scheduler=scheduler,
                                        search_alg=search_algorithm(params, at_once), max_concurrent_trials=at_once),
            run_config=tune.RunConfig(name="tune", storage_path=str(folder), callbacks=[tune_callback(mlflow_trials)],
                                      verbose=1),
        )
    results = tuner.fit()
    scored = [r for r in results if r.metrics and METRIC in r.metrics]
    best = max(scored, key=lambda r: r.metrics[METRIC]) if scored else None
    mlflow_trials.end(None if best is None else {METRIC: best.metrics[METRIC], "config": best.config})
    if best is None:
        raise UserError(f"sweep {cfg.name}: no trial reported {METRIC}; see {folder / 'tune'}")
    report = best_report(params, best.config, best.metrics, len(results))
    with atomic_path(folder / "best.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(report, sort_keys=False, width=1000))
    return report


def best_report(params: Params, config: dict, metrics: dict, trials: int) -> dict[str, Any]:
    cfg = params.sweep
    return {
        "sweep": cfg.name,
        "trials": trials,
        METRIC: round(float(metrics[METRIC]), 2),
        "scored_on": f"the last {cfg.held_images} training images, after {int(metrics['epoch'])} of {cfg.epochs} epochs",
        "clims_loss": {"weights": {k: float(f"{config[k]:.4g}") for k in WEIGHT_KEYS}, "tau": float(f"{config['tau']:.4g}")},
        "apply": apply_command(config),
    }
