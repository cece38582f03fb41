"""What the benchmark scripts share: where results go and how they are shown."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def write_results(name: str, report: dict, quiet: bool = False) -> Path:
    """Print the report (unless quiet) and keep it as benchmarks/results/<name>.json."""
    if not quiet:
        print(json.dumps(report, indent=2))
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out
