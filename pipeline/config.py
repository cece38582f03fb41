"""conf/ -> params.yaml, exactly as `dvc exp run` composes it (DVC's Hydra integration)."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path("conf")


def compose(overrides: list[str] | None = None, conf_dir: str | Path = CONF_DIR) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_container(cfg)


def to_yaml(composed: dict) -> str:
    """params.yaml text, formatted as DVC writes it."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(composed))
