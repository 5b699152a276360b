"""IRN: IRNet shapes and frozen backbone, one training step, one pseudo-mask inference."""

from __future__ import annotations

import numpy as np
import torch

from wsss.methods.irn import IrnConfig, irn_loss_terms, pseudo_mask
from wsss.models.backbones import build_backbone
from wsss.models.irn import IRNet


def _irnet() -> IRNet:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", output_stride=16, pretrained="none", frozen_bn=False)
    return IRNet(backbone=backbone)


def test_irnet_shapes_and_frozen_backbone() -> None:
    model = _irnet()
    model.train()
    assert not model.backbone.training and model.edge6.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    edge, disp = model(torch.randn(2, 3, 64, 72))
    assert edge.shape == (2, 1, 16, 18) and disp.shape == (2, 2, 16, 18)
    edge_params, dp_params = model.param_groups()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in edge_params + dp_params}


def test_one_training_step_is_finite_and_trains_only_the_branches() -> None:
    model = _irnet()
    model.train()
    edge, dp = model.param_groups()
    optimizer = torch.optim.SGD([{"params": edge, "lr": 0.1}, {"params": dp, "lr": 1.0}])
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:40, 16:40] = 2
    mask[:, 12:16, :] = 255
    mask[1, :, 48:] = 1
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": torch.ones(2, 4), "mask": mask,
             "name": ["a", "b"], "index": torch.tensor([0, 1])}
    terms = irn_loss_terms(model, batch, radius=5)
    assert set(terms) == {"affinity_pos", "affinity_neg", "displacement_fg", "displacement_bg"}
    assert all(torch.isfinite(v) and v >= 0 for v in terms.values())
    sum(terms.values()).backward()
    optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_pseudo_mask_inference() -> None:
    model = _irnet().eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 62, 3), dtype=np.uint8)
    cams = rng.random((3, 50, 62)).astype(np.float32)
    keys = np.array([0, 2, 5])
    cfg = IrnConfig(cam_power=1.3, num_steps=32)
    with torch.inference_mode():
        mask, probs, probs_keys = pseudo_mask(model, image, cams, keys, cfg=cfg,
                                              device=torch.device("cpu"))
    assert mask.shape == (50, 62) and mask.dtype == np.uint8
    assert probs_keys.tolist() == [0, 2, 5] and probs.shape == (3, 50, 62)
    assert np.all(probs[0] == cfg.bg_threshold)
    assert np.isclose(probs[1:].max(), 1.0, atol=1e-4) and probs.min() >= 0
    assert set(np.unique(mask).tolist()) <= {0, 2, 5}
    np.testing.assert_array_equal(probs_keys[probs.argmax(0)], mask)
    with torch.inference_mode():
        empty, empty_probs, empty_keys = pseudo_mask(model, image, cams[:1], keys[:1], cfg=cfg,
                                                     device=torch.device("cpu"))
    assert not empty.any() and empty_keys.tolist() == [0] and empty_probs.shape == (1, 50, 62)
