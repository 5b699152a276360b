"""Trainer, schedule, sampler and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wsss.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsss.engine.trainer import EpochSampler, Trainer, TrainingError, poly_lambda


class Toy(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        x = torch.randn(4)  # seeded per item by the trainer
        return {"x": x, "y": x.sum().reshape(1)}


def _step(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return {"mse": ((model(batch["x"]) - batch["y"]) ** 2).mean()}


def _trainer(tmp_path: Path, **kw) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    args = dict(model=model, step_fn=_step, param_groups=[{"params": model.parameters(), "lr": 0.05}],
                dataset=Toy(), out_dir=tmp_path, device=torch.device("cpu"), epochs=3,
                batch_size=4, momentum=0.9)
    args.update(kw)
    return Trainer(**args)


def test_poly_schedule_matches_formula() -> None:
    f = poly_lambda(10, 0.9)
    assert f(0) == 1.0 and f(10) == 0.0
    assert f(3) == pytest.approx((1 - 3 / 10) ** 0.9)


def test_sampler_depends_only_on_seed_and_epoch() -> None:
    a = EpochSampler(10, shuffle=True, seed=1, batch_size=3)
    b = EpochSampler(10, shuffle=True, seed=1, batch_size=3)
    a.set_epoch(2)
    b.set_epoch(2, start=3)
    assert a.indices() == b.indices() and len(a.indices()) == 9
    assert list(b) == a.indices()[3:]
    a.set_epoch(3)
    assert a.indices() != b.indices()


def test_training_reduces_loss_and_resume_is_exact(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full").fit()
    assert full.history[-1]["mse"] < full.history[0]["mse"]

    class Stop(Exception):
        pass

    part = _trainer(tmp_path / "part", checkpoint_every=2)
    real = part.train_step
    calls = {"n": 0}

    def dying(batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise Stop
        return real(batch)

    part.train_step = dying  # type: ignore[method-assign]
    with pytest.raises(Stop):
        part.fit()
    resumed = _trainer(tmp_path / "part")
    result = resumed.fit()
    assert result.steps == full.steps == 12
    for p, q in zip(resumed.model.parameters(), _trained_params(tmp_path / "full"), strict=True):
        assert torch.equal(p, q)


def _trained_params(folder: Path) -> list[torch.Tensor]:
    return list(load_checkpoint(folder / "last.pt")["model"].values())


def test_nan_loss_names_step_and_term_and_keeps_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, epochs=2)
    trainer.fit()
    before = (tmp_path / "last.pt").read_bytes()

    def bad(model, batch):
        return {"mse": _step(model, batch)["mse"], "aux": torch.tensor(float("nan"))}

    again = _trainer(tmp_path, epochs=3, step_fn=bad)
    with pytest.raises(TrainingError, match=r"'aux'.*step 9"):
        again.fit()
    assert (tmp_path / "last.pt").read_bytes() == before
    load_checkpoint(tmp_path / "last.pt")


def test_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.arange(3)})
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
