"""Shared fixtures: a tiny synthetic data set, run overrides for the smoke config, a device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "synthetic" / "smoke.yaml"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train / 8 val synthetic images at 48 px (the smoke config's data), made once."""
    from wsss.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate(root, num_train=24, num_val=8, image_size=48, seed=0)
    return root


@pytest.fixture()
def smoke_overrides(synthetic_root: Path, tmp_path: Path) -> list[str]:
    """Overrides that point the smoke config at the shared data and a fresh run folder."""
    return [f"data.root={synthetic_root}", f"pipeline.workdir={tmp_path / 'runs'}",
            "pipeline.device=cpu"]


@pytest.fixture()
def device() -> torch.device:
    return torch.device("cpu")
