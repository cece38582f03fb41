"""Which CPU kernel choices change the bits of a training run: the fingerprint of a short run
under each setting of the libraries' dispatch, on this machine.

    python benchmarks/kernel_paths.py [--steps 20] [--out kernel_paths_<name>]

Two machines train different tiny CLIPs from the same code and seeds because torch's CPU kernels
pick their code path by the processor: ATen's vectorised kernels by its vector level
(`ATEN_CPU_CAPABILITY`), MKL's matrix products by its branch (`MKL_CBWR`), oneDNN's
convolutions by its instruction set (`ONEDNN_MAX_CPU_ISA`), and every parallel reduction by the
number of threads. Each setting below runs in its own process (the libraries read these once, at
start-up): a tiny CLIP trained `--steps` steps from the default params, and a CAM net trained 5
SGD steps on fixed random images; it prints the SHA-256 of their weights, the CLIP's hole margin
and the seconds taken. A setting whose fingerprints equal the first row's does not change what
this machine computes. `portable` pins every choice to a path that Intel and AMD processors with
AVX2 share (MKL's `COMPATIBLE` is the only branch its documentation names for non-Intel
processors): the fingerprint to compare across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_model, digest, results_name, write_results

sys.path.insert(0, str(REPO))
from pipeline.layout import git  # noqa: E402

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"}
SETTINGS = {
    "default": {},
    "default, again": {},
    "ATen vector level: default (no AVX2)": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL: reproducible AVX2 branch": {"MKL_CBWR": "AVX2"},
    "MKL: COMPATIBLE branch": {"MKL_CBWR": "COMPATIBLE"},
    "oneDNN: at most SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "one thread": {"OMP_NUM_THREADS": "1"},
    "portable": PORTABLE,
}


def fingerprint(steps: int) -> dict:
    """This process's short CLIP and CAM-net runs (the settings come from its environment)."""
    import torch
    import yaml

    from pipeline.clip.prepare import prepare_clip
    from pipeline.clip.model import WEIGHTS_FILE
    from pipeline.nets.cam_net import build_cam_net
    from pipeline.params import validate

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["clip"]["train"].update(steps=steps, eval_scenes=40, warmup_steps=2)
    params = validate(raw)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        metrics = prepare_clip(params, Path(folder) / "clip")
        clip = digest(torch.load(Path(folder) / "clip" / WEIGHTS_FILE, weights_only=True).values())
    clip_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    net = build_cam_net(params.backbone, len(params.dataset.class_names))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        loss = net(images).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {"clip": clip, "hole_margin": metrics["hole_margin"], "clip_seconds": round(clip_seconds, 1),
            "cam_net": digest(net.state_dict().values()), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def code_version() -> dict:
    """What the fingerprints depend on: the committed pipeline/ and params.yaml (a comparison
    across machines holds only between equal versions)."""
    here = ("-C", str(REPO))
    return {"pipeline_tree": git(*here, "rev-parse", "HEAD:pipeline").strip(),
            "params_blob": git(*here, "rev-parse", "HEAD:params.yaml").strip(),
            "uncommitted_changes": bool(git(*here, "status", "--porcelain", "--", "pipeline", "params.yaml").strip())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="tiny CLIP training steps per setting")
    parser.add_argument("--out", type=results_name, default=None, help="results name: benchmarks/results/<out>.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return print(json.dumps(fingerprint(args.steps)))
    rows = {}
    inherited = {k: v for k, v in os.environ.items() if k not in PORTABLE}  # each row runs with its own settings only
    for name, env in SETTINGS.items():
        result = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps)],
                                env={**inherited, **env}, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{name}: the run failed:\n{result.stderr[-2000:]}")
        rows[name] = {"env": env, **json.loads(result.stdout.strip().splitlines()[-1])}
        first = next(iter(rows.values()))
        same = "same" if (rows[name]["clip"], rows[name]["cam_net"]) == (first["clip"], first["cam_net"]) else "DIFFERENT"
        print(f"{name:40s} clip {rows[name]['clip']}  cam net {rows[name]['cam_net']}  "
              f"hole margin {rows[name]['hole_margin']!r:24s} {rows[name]['clip_seconds']:6.1f} s  {same}", flush=True)
    if args.out:
        write_results(args.out, {"cpu": cpu_model(), "cores": os.cpu_count(), "code": code_version(), "steps": args.steps,
                                "settings": rows}, quiet=True)


if __name__ == "__main__":
    main()
