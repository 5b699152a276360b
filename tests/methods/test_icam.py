"""ICAM on the SEAM base: PCM, network shapes, every loss configuration, inference rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.config import ConfigError, load_config
from wsss.methods import build_method
from wsss.methods.icam import IcamConfig, icam_cams, icam_losses, seam_cams, seam_losses
from wsss.models.backbones import build_backbone
from wsss.models.resnet38 import ResNet38Backbone
from wsss.models.seam import SeamNet, pcm_input, pixel_correlation

TINY = ["model.backbone=resnet18", "model.pretrained=none", "model.frozen_bn=false",
        "model.output_stride=8", "method.name=icam"]


def _net(pcm_on_logits: bool = True, learn_fsl: bool = False, num_classes: int = 3) -> SeamNet:
    backbone = build_backbone("resnet18", output_stride=8, pretrained="none", frozen_bn=False)
    return SeamNet(backbone=backbone, num_classes=num_classes, pcm_on_logits=pcm_on_logits,
                   learn_fsl=learn_fsl)


def test_pixel_correlation_shapes_and_column_normalisation() -> None:
    feats = torch.randn(2, 8, 5, 7)
    cams = torch.randn(2, 4, 5, 7)
    out = pixel_correlation(cams, feats)
    assert out.shape == (2, 4, 5, 7)
    # the affinity columns sum to one, so a constant map stays (almost) constant
    const = pixel_correlation(torch.full((2, 4, 5, 7), 3.0), feats)
    assert torch.allclose(const, torch.full_like(const, 3.0), atol=1e-3)


def test_pcm_input_background_and_max_suppression() -> None:
    logits = torch.randn(2, 5, 6, 6)
    c = pcm_input(logits)
    assert c.shape == logits.shape and c.min() >= 0 and c.max() <= 1
    assert torch.allclose(c[:, 0], 1 - c[:, 1:].amax(1))
    assert torch.all((c[:, 1:] > 0).sum(1) <= 1)  # one foreground class per pixel at most


@pytest.mark.parametrize("backbone,stride", [("resnet18", 8), ("resnet18", 16)])
def test_seam_net_output_shapes(backbone: str, stride: int) -> None:
    net = SeamNet(backbone=build_backbone(backbone, output_stride=stride, pretrained="none",
                                          frozen_bn=False), num_classes=3)
    out = net(torch.randn(2, 3, 64, 48))
    assert out["logits"].shape == out["logits_rv"].shape == (2, 4, 64 // stride, 48 // stride)


def test_seam_net_on_a_narrow_resnet38() -> None:
    backbone = ResNet38Backbone(widths=(8, 8, 8, 16, 16, 32, 32))
    net = SeamNet(backbone=backbone, num_classes=2).eval()
    out = net(torch.randn(1, 3, 40, 40))
    assert out["logits"].shape == (1, 3, 5, 5)
    assert net.f8_3.in_channels == 16 and net.f8_4.in_channels == 16  # conv4 / conv5 taps


def test_pcm_gradient_reaches_the_classifier_only_in_the_icam_form() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for on_logits, expect in ((True, True), (False, False)):
        net = _net(pcm_on_logits=on_logits)
        net(x)["logits_rv"].sum().backward()
        got = net.fc8.weight.grad is not None and net.fc8.weight.grad.abs().sum() > 0
        assert got == expect
        assert net.f9.weight.grad.abs().sum() > 0


LOSS_CASES = [
    ("icam", "avg", 0.8, 0.5, False),
    ("icam", "max", 0.5, 0.5, True),
    ("icam", "avg", 0.0, 0.0, False),
    ("icam", "max", 1.0, 0.0, False),
    ("seam", "avg", 0.0, 0.0, False),
    ("seam", "avg", 0.8, 0.5, False),
    ("seam", "max", 1.0, 0.5, False),
]


@pytest.mark.parametrize("base,pooling,lam,fsl,learned", LOSS_CASES)
def test_loss_terms_are_finite_and_match_the_config(base: str, pooling: str, lam: float,
                                                    fsl: float, learned: bool) -> None:
    torch.manual_seed(0)
    cfg = IcamConfig(base=base, pooling=pooling, sampling_weight=lam, fsl_weight=fsl,
                     fsl_learned=learned, fsl_sigma=1.0, num_samples=3)
    net = _net(pcm_on_logits=base == "icam", learn_fsl=learned)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    fn = icam_losses if base == "icam" else seam_losses
    terms = fn(net, torch.randn(2, 3, 32, 32), labels, cfg)
    expected = {"er", "ecr"} | ({"cls_rv"} if base == "icam" else {"rvmin"})
    expected |= {"cls_pool"} if lam < 1 else set()
    expected |= {"cls_sample"} if lam > 0 else set()
    expected |= {"fsl"} if fsl > 0 else set()
    assert set(terms) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    assert terms["er"] >= 0 and terms["ecr"] >= 0
    sum(terms.values()).backward()
    assert net.fc8.weight.grad.abs().sum() > 0
    if learned:
        assert net.fsl_mu.grad is not None and net.fsl_log_sigma.grad is not None


def test_icam_inference_rules() -> None:
    torch.manual_seed(0)
    net = _net().eval()
    image = np.random.default_rng(0).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    labels = np.array([1.0, 0.0, 1.0])
    with torch.inference_mode():
        cams, keys = icam_cams(net, image, labels, scales=[1.0, 0.5], flip=True,
                               device=torch.device("cpu"))
    assert cams.shape == (2, 30, 44) and keys.tolist() == [1, 3]
    assert torch.all((cams > 0).sum(0) <= 1)  # only the per-pixel maximum class keeps a value
    peaks = cams.flatten(1).amax(-1)  # 1 for a class that wins somewhere, else 0
    assert all(p.item() == pytest.approx(1.0, abs=1e-3) or p.item() == 0.0 for p in peaks)
    assert peaks.max().item() == pytest.approx(1.0, abs=1e-3) and cams.min() >= 0


def test_seam_inference_is_max_normed_and_label_masked() -> None:
    torch.manual_seed(0)
    net = _net(pcm_on_logits=False).eval()
    image = np.random.default_rng(1).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    with torch.inference_mode():
        cams, keys = seam_cams(net, image, np.array([0.0, 1.0, 0.0]), scales=[1.0], flip=True,
                               device=torch.device("cpu"))
        empty, none = seam_cams(net, image, np.zeros(3), scales=[1.0], flip=False,
                                device=torch.device("cpu"))
    assert cams.shape == (1, 30, 44) and keys.tolist() == [2]
    assert cams.min() == 0 and cams.max() <= 1
    assert empty.shape == (0, 30, 44) and none.size == 0


def test_seam_base_trains_and_infers_through_the_method() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, TINY + ["method.base=seam", "method.fsl_weight=0",
                                    "method.sampling_weight=0"])
    method = build_method(cfg)
    model = method.build_model(num_classes=4)
    opt = torch.optim.SGD(method.param_groups(model, 0.01), lr=0.01)
    batch = {"image": torch.randn(2, 3, 32, 32), "labels": torch.tensor([[1.0, 0, 1, 0],
                                                                           [0, 0, 0, 1]])}
    terms = method.training_step(model.train(), batch)
    assert set(terms) == {"cls_pool", "rvmin", "er", "ecr"}
    sum(terms.values()).backward()
    opt.step()
    image = np.random.default_rng(0).integers(0, 255, (20, 26, 3), dtype=np.uint8)
    with torch.inference_mode():
        cams, keys = method.infer_cams(model.eval(), image, np.array([0, 1, 0, 1.0]))
    assert cams.shape == (2, 20, 26) and keys.tolist() == [2, 4]
    assert method.eval_threshold_key == "seam_cam_eval_threshold"


def test_learned_fsl_parameters_get_their_own_group_without_weight_decay() -> None:
    cfg = load_config(None, TINY + ["method.fsl_learned=true"])
    method = build_method(cfg)
    model = method.build_model(num_classes=3)
    groups = method.param_groups(model, 0.1)
    learned = [g for g in groups if any(p is model.fsl_mu for p in g["params"])]
    assert len(learned) == 1 and learned[0]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("key,value", [("base", "psa"), ("pooling", "sum"),
                                       ("sampling_weight", "1.5"), ("num_samples", "0"),
                                       ("fsl_normalization", "mean")])
def test_bad_values_name_the_key(key: str, value: str) -> None:
    cfg = load_config(None, TINY + [f"method.{key}={value}"])
    with pytest.raises(ConfigError, match=f"method.{key}"):
        build_method(cfg)


def test_stages_cam_masks_then_affinitynet() -> None:
    cam = ["data", "train_cam", "make_cam", "eval_cam", "make_cam_masks", "eval_cam_masks"]
    aff = ["make_aff_labels", "eval_aff_labels", "train_affinitynet", "make_aff_masks",
           "eval_aff_masks"]
    method = build_method(load_config(None, TINY))
    assert [s.name for s in method.stages()] == cam + aff
    assert method.pseudo_mask_stage == "make_aff_masks"
    assert method.mcfg.affinitynet.low_alpha == 2.0 and method.mcfg.affinitynet.num_steps == 64
    method = build_method(load_config(None, TINY + ["method.affinitynet_refine=false",
                                                    "segnet.enabled=true"]))
    names = [s.name for s in method.stages()]
    assert names == cam + ["train_segnet", "predict_val", "eval_val"]
    assert method.pseudo_mask_stage == "make_cam_masks"


@pytest.mark.slow
def test_synthetic_pipeline_reports_contour_f(tmp_path) -> None:
    from wsss.pipeline.runner import run_pipeline

    cfg = load_config("configs/synthetic/icam.yaml", [
        f"data.root={tmp_path / 'data'}", f"pipeline.workdir={tmp_path / 'runs'}",
        "pipeline.generate_data=true", "data.synthetic.num_train=12", "data.synthetic.num_val=2", "train.epochs=1",
        "train.batch_size=4", "method.cam_scales=[1.0]", "pipeline.tensorboard=false",
        "pipeline.report=false", "eval.plots=false"])
    result = run_pipeline(cfg)
    masks = result.summary("eval_cam_masks")
    assert 0 <= masks["miou"] <= 1 and 0 <= masks["contour_f"] <= 1
    assert 0 <= result.summary("eval_cam")["miou"] <= 1


class _FixedLogits(torch.nn.Module):
    """SEAM-base stand-in: fixed stride-level logits per view (picked by the input width)."""

    def __init__(self, view1: torch.Tensor, view2: torch.Tensor) -> None:
        super().__init__()
        self.view1, self.view2 = view1, view2
        self.fc8 = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.view1 if x.shape[-1] == 32 else self.view2
        return {"logits": logits, "logits_rv": logits}


@pytest.mark.parametrize("mode", ["relu", "hfpl"])
def test_seam_sampling_variants(mode: str) -> None:
    # class 1: all logits -10 but one pixel at -1 per view; hfpl draws ∝ sigmoid + 1e-5 (the -1
    # pixel ~ 6000x likelier than each other pixel), relu ∝ ReLU + 1e-5 (uniform here)
    view1 = torch.full((1, 2, 4, 4), -10.0)
    view1[0, 1, 2, 3] = -1.0
    view1[0, 0] = 0.0
    view2 = view1[..., :2, :2].clone() - 3.0  # view 2 (x 0.3 size) differs
    model = _FixedLogits(view1, view2)
    labels = torch.tensor([[1.0]])
    lam, samples = 0.2, 2000
    cfg = IcamConfig(base="seam", seam_sampling=mode, sampling_weight=lam, num_samples=samples,
                     fsl_weight=0.0)
    torch.manual_seed(0)
    terms = seam_losses(model, torch.randn(1, 3, 32, 32), labels, cfg)

    def bce(values: torch.Tensor) -> float:
        return torch.nn.functional.binary_cross_entropy_with_logits(
            values, torch.ones_like(values)).item()

    def pooled(logits: torch.Tensor, size: int) -> float:  # GAP of the upsampled logits
        up = torch.nn.functional.interpolate(logits, size=(size, size), mode="bilinear",
                                             align_corners=True)
        return bce(up[:, 1:].mean((2, 3)))

    pool1, pool2 = pooled(view1, 32), pooled(view2, 9)
    flat1, flat2 = view1[0, 1].flatten(), view2[0, 1].flatten()
    def drawn(flat: torch.Tensor, weights: torch.Tensor) -> float:  # E[MLSM of the draws]
        per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(
            flat, torch.ones_like(flat), reduction="none")
        return (weights / weights.sum() * per_pixel).sum().item()

    if mode == "hfpl":  # view 1 only; view 2's pooled term keeps its full weight
        expected_sample = lam * 0.5 * drawn(flat1, torch.sigmoid(flat1) + 1e-5)
        expected_pool = 0.5 * ((1 - lam) * pool1 + pool2)
    else:  # both views, uniform draws here
        expected_sample = lam * 0.5 * (drawn(flat1, torch.ones(16)) + drawn(flat2, torch.ones(4)))
        expected_pool = 0.5 * (1 - lam) * (pool1 + pool2)
    assert terms["cls_pool"].item() == pytest.approx(expected_pool, rel=1e-5)
    # 2000 draws against the expectation: within 5 %
    assert terms["cls_sample"].item() == pytest.approx(expected_sample, rel=0.05)
