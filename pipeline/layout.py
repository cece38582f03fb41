"""Where the stages put their outputs (dvc.yaml names the same paths)."""
from pathlib import Path

DATA_DIR = Path("data")
CLIP_DIR = Path("artifacts/clip")
METRICS_DIR = Path("metrics")


def manifest_path(split: str, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"{split}.parquet"
