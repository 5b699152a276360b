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


class FixedVal(torch.utils.data.Dataset):
    """Deterministic validation items whose target (0.4·Σx) the training (Σx) overshoots."""

    def __init__(self) -> None:
        self.x = torch.linspace(-1, 1, 7 * 4).reshape(7, 4)

    def __len__(self) -> int:
        return 7

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": (0.4 * self.x[i].sum()).reshape(1)}


def _val_loss(state: dict, batch_size: int) -> float:
    """Mean over batches (last one smaller) of the batch MSE, computed here independently."""
    model = nn.Linear(4, 1)
    model.load_state_dict(state)
    data = FixedVal()
    losses = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x, y = data.x[start:start + batch_size], 0.4 * data.x[start:start + batch_size].sum(1)
            losses.append(((model(x)[:, 0] - y) ** 2).mean().item())
    return sum(losses) / len(losses)


def test_model_selection_keeps_the_weights_with_the_lowest_validation_loss(tmp_path: Path
                                                                          ) -> None:
    snapshots: dict[int, dict] = {}
    events: list[tuple[str, int]] = []
    trainer: Trainer

    def on_start(epoch: int) -> None:
        events.append(("start", epoch))
        snapshots[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def step(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        if not model.training:
            events.append(("val", events[-1][1] if events else -1))
        return _step(model, batch)

    trainer = _trainer(tmp_path, epochs=6, step_fn=step, on_epoch_start=on_start,
                       val_dataset=FixedVal(), select_epochs=[1, 2, 4, 6])
    result = trainer.fit()
    # validation after 1, 2, 4 and 6 completed epochs, right after on_epoch_start(e)
    assert sorted(result.val_losses) == [1, 2, 4, 6]
    for e in (1, 2, 4):
        first_val = events.index(("val", e))
        assert events[first_val - 1] == ("start", e)
    expected = {e: _val_loss(snapshots[e], batch_size=4) for e in (1, 2, 4, 6)}
    for e, loss in expected.items():
        assert result.val_losses[e] == pytest.approx(loss, rel=1e-6)
    best = min(expected, key=expected.get)
    assert result.selected_epoch == best and best not in (6,)  # not simply the last weights
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, snapshots[best][key])


def test_model_selection_survives_a_resume(tmp_path: Path) -> None:
    kw = dict(epochs=5, val_dataset=FixedVal(), select_epochs=[1, 3, 5])
    full = _trainer(tmp_path / "full", **kw).fit()

    class Stop(Exception):
        pass

    part = _trainer(tmp_path / "part", **kw)
    real = part.train_step
    calls = {"n": 0}

    def dying(batch):
        calls["n"] += 1
        if calls["n"] == 15:  # in epoch 4, after two validations
            raise Stop
        return real(batch)

    part.train_step = dying  # type: ignore[method-assign]
    with pytest.raises(Stop):
        part.fit()
    resumed = _trainer(tmp_path / "part", **kw)
    result = resumed.fit()
    assert result.val_losses == pytest.approx(full.val_losses)
    assert result.selected_epoch == full.selected_epoch
    with pytest.raises(ValueError, match="select_epochs"):
        _trainer(tmp_path / "bad", epochs=2, val_dataset=FixedVal(), select_epochs=[3])
