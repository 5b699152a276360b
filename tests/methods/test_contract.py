"""Every registered method builds, takes one finite training step and infers CAMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.methods import METHODS, build_method

TINY = ["model.backbone=resnet18", "model.pretrained=none", "model.frozen_bn=false"]


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_and_one_inference(name: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(None, TINY + [f"method.name={name}"])
    method = build_method(cfg)
    model = method.build_model(num_classes=4)
    groups = method.param_groups(model, 0.01)
    assert sum(len(g["params"]) for g in groups) > 0
    optimizer = torch.optim.SGD(groups, lr=0.01)
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "labels": torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]),
        "mask": torch.zeros(2, 64, 64, dtype=torch.long),
        "saliency": torch.rand(2, 64, 64),
        "name": ["a", "b"], "index": torch.tensor([0, 1]),
    }
    model.train()
    terms = method.training_step(model, batch)
    loss = sum(terms.values())
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    optimizer.step()

    model.eval()
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    with torch.inference_mode():
        cams, keys = method.infer_cams(model, image, np.array([0, 1, 1, 0], dtype=np.float32))
    assert cams.shape == (len(keys), 50, 70)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert set(keys[keys > 0].tolist()) == {2, 3}
    names = [s.name for s in method.stages()]
    assert names[0] == "data" and len(names) == len(set(names))
