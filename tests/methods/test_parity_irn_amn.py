"""Parity with the official IRN (jiwoon-ahn/irn @a2ece00) and AMN (gaviotas/AMN @75c1999) code.

Each test loads `tests/fixtures/parity/irn_amn/<name>.npz` (inputs and official outputs, made by
`tests/fixtures/parity/make_irn_amn.py`, whose docstring says how) and compares wsss's output on
the same inputs. Networks get the fixtures' deterministic weights (`synthetic_weight`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.io import load_cams, save_cams
from wsss.methods import build_method
from wsss.methods.amn import amn_cams
from wsss.methods.irn import IrnConfig, pseudo_mask
from wsss.models.backbones import build_backbone
from wsss.models.irn import IRNet
from wsss.ops.affinity import (
    PathIndex,
    affinity_from_boundary,
    affinity_labels,
    downsample_labels,
    pair_displacement,
)
from wsss.ops.cam import seeds_from_cams
from wsss.ops.random_walk import random_walk

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
_spec = importlib.util.spec_from_file_location("make_irn_amn", PARITY / "make_irn_amn.py")
make_irn_amn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_irn_amn)

CPU = torch.device("cpu")


def fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / "irn_amn" / f"{name}.npz") as data:
        out = {k: data[k] for k in data.files}
    meta = json.loads(str(out.pop("meta")))
    assert meta["commit"] in {c for _, c in make_irn_amn.REPOS.values()}
    return out


@functools.lru_cache(maxsize=1)
def _irnet() -> IRNet:
    """One ResNet-50 IRNet with the fixtures' weights, shared by the tests (never modified)."""
    with torch.device("meta"):  # no default initialisation: every tensor is filled below
        backbone = build_backbone("resnet50", output_stride=16, pretrained="none",
                                  frozen_bn=True)
        model = IRNet(backbone=backbone)
    return _synthetic(model)


def _synthetic(model: torch.nn.Module) -> torch.nn.Module:
    model = model.to_empty(device=CPU)
    make_irn_amn.load_synthetic(model)
    return model.eval()


def _crf_available() -> bool:
    return importlib.util.find_spec("pydensecrf") is not None


needs_crf = pytest.mark.skipif(not _crf_available(), reason="pydensecrf2 not installed")


# --- IRN boundary map (issue 20 item 1) ---------------------------------------------------------


def test_boundary_map_pads_like_edge_displacement() -> None:
    f = fixture("edge_displacement")
    model = _irnet()
    image = torch.from_numpy(f["image_normalized"])[None]
    padded = model.boundary(image, pad_to=96).numpy()
    np.testing.assert_allclose(padded, f["edge_96"], atol=2e-5)
    unpadded = model.boundary(image, pad_to=0).numpy()
    np.testing.assert_allclose(unpadded, f["edge_unpadded"], atol=2e-5)
    # GroupNorm sees the padding: the padded map is not the unpadded one.
    assert np.abs(f["edge_96"] - f["edge_unpadded"]).max() > 0.01


@pytest.mark.slow
def test_boundary_map_pads_to_512_like_edge_displacement() -> None:
    f = fixture("edge_displacement")
    out = _irnet().boundary(torch.from_numpy(f["image_normalized"])[None]).numpy()
    np.testing.assert_allclose(out, f["edge_512"], atol=2e-5)


# --- CAM stage: stride-4 map and float32 files (items 3, 4) -------------------------------------


@functools.lru_cache(maxsize=1)
def _cam_baseline():
    cfg = load_config(None, ["method.name=cam_baseline", "model.backbone=resnet50",
                             "model.pretrained=none", "model.frozen_bn=true",
                             "pipeline.winograd=false", "pipeline.view_streams=false"])
    method = build_method(cfg)
    with torch.device("meta"):
        model = method.build_model(20)
    return method, _synthetic(model)


@needs_crf
def test_make_cam_strided_map_and_float32_seeds(tmp_path) -> None:
    f = fixture("make_cam")
    method, model = _cam_baseline()
    assert list(f["scales"]) == list(method.mcfg.cam_scales)
    with torch.inference_mode():
        arrays = method.cam_file_arrays(model, f["image"], f["label"])
    np.testing.assert_array_equal(arrays["keys"], f["keys"] + 1)
    np.testing.assert_allclose(arrays["cams_strided"], f["cam"], atol=1e-5)
    np.testing.assert_allclose(arrays["cams"], f["high_res"], atol=1e-5)
    # IRN's strided map is not a reduction of the full-resolution one.
    low = torch.nn.functional.interpolate(torch.from_numpy(f["high_res"])[None], size=(14, 18),
                                          mode="bilinear", align_corners=False)[0]
    assert np.abs(low.numpy() - f["cam"]).max() > 1e-3

    # The stored file (float32 by default) gives the official seeds.
    save_cams(tmp_path / "c.npz", **arrays)
    cams, keys = load_cams(tmp_path / "c.npz")
    fg, bg = make_irn_amn.IRN_SEED
    seeds = seeds_from_cams(f["image"], cams, keys, fg_threshold=fg, bg_threshold=bg)
    np.testing.assert_array_equal(seeds, fixture("cam_to_ir_label")["conf"])


def test_cam_network_forward_matches_official() -> None:
    f = fixture("cam_forward")
    _, model = _cam_baseline()
    with torch.inference_mode():
        logits = model(torch.from_numpy(f["images"]))
    np.testing.assert_allclose(logits.numpy(), f["logits"], rtol=1e-4, atol=1e-5)


def test_cam_files_are_float32_unless_float16_is_asked(tmp_path) -> None:
    cams = np.random.default_rng(0).random((2, 5, 6)).astype(np.float32)
    strided = cams[:, ::2, ::2]
    save_cams(tmp_path / "a.npz", cams, np.array([3, 7]), cams_strided=strided)
    with np.load(tmp_path / "a.npz") as data:
        assert data["cams"].dtype == np.float32 and data["cams_strided"].dtype == np.float32
        np.testing.assert_array_equal(data["cams"], cams)
    save_cams(tmp_path / "b.npz", cams, np.array([3, 7]), cams_strided=strided, dtype="float16")
    with np.load(tmp_path / "b.npz") as data:
        assert data["cams"].dtype == np.float16 and data["cams_strided"].dtype == np.float16
        assert data["keys"].dtype == np.int64
    with pytest.raises(ValueError, match="pipeline.cam_dtype"):
        save_cams(tmp_path / "c.npz", cams, np.array([3, 7]), dtype="bfloat16")


@needs_crf
def test_seed_rule_matches_cam_to_ir_label() -> None:
    f = fixture("make_cam")
    fg, bg = make_irn_amn.IRN_SEED
    seeds = seeds_from_cams(f["image"], f["high_res"], f["keys"] + 1, fg_threshold=fg,
                            bg_threshold=bg)
    np.testing.assert_array_equal(seeds, fixture("cam_to_ir_label")["conf"])


# --- Random walk (make_sem_seg_labels) ----------------------------------------------------------


def _walk_cfg(power: float) -> IrnConfig:
    return IrnConfig(num_steps=2 ** make_irn_amn.EXP_TIMES, boundary_pad=96, walk_tol=0.0,
                     cam_power=power, bg_threshold=make_irn_amn.SEM_SEG_BG["irn"])


def test_random_walk_matches_propagate_to_edge() -> None:
    f, cam = fixture("make_sem_seg_labels"), fixture("make_cam")
    edge = torch.from_numpy(fixture("edge_displacement")["edge_96"])
    walked = random_walk(torch.from_numpy(cam["cam"]), edge, radius=5, beta=10.0,
                         num_steps=2 ** make_irn_amn.EXP_TIMES, tol=0.0)
    np.testing.assert_allclose(walked.numpy(), f["rw"][:, 0], rtol=1e-4, atol=1e-6)


def test_pseudo_mask_matches_make_sem_seg_labels() -> None:
    cam = fixture("make_cam")
    with torch.inference_mode():
        mask, _, _ = pseudo_mask(_irnet(), cam["image"], cam["high_res"], cam["keys"] + 1,
                                 cams_strided=cam["cam"], cfg=_walk_cfg(1.0), device=CPU)
    np.testing.assert_array_equal(mask, fixture("make_sem_seg_labels")["sem_seg"])


def test_amn_pseudo_mask_matches_make_sem_seg_labels() -> None:
    cam = fixture("amn_make_cam")
    keys = np.concatenate([[0], cam["keys"] + 1])
    with torch.inference_mode():
        mask, _, _ = pseudo_mask(_irnet(), cam["image"], cam["high_res"], keys,
                                 cams_strided=cam["cam"], cfg=_walk_cfg(1.3), device=CPU)
    np.testing.assert_array_equal(mask, fixture("amn_sem_seg_labels")["sem_seg"])


# --- AMN CAMs, seeds and loss -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _amn():
    cfg = load_config(None, ["method.name=amn", "model.backbone=resnet50",
                             "model.pretrained=none", "model.frozen_bn=true"])
    with torch.device("meta"):
        model = build_method(cfg).build_model(20)
    return _synthetic(model)  # wsss's eval() turns the dropout off


def test_amn_forward_matches_official() -> None:
    f = fixture("amn_forward")
    with torch.inference_mode():
        logits = _amn()(torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]))
    np.testing.assert_allclose(logits.numpy(), f["logits"], rtol=1e-4, atol=1e-5)


def test_amn_cams_match_make_amn_cam() -> None:
    f = fixture("amn_make_cam")
    model = _amn()
    with torch.inference_mode():
        cams, strided, keys = amn_cams(model, f["image"], f["label"], scales=list(f["scales"]),
                                       seeds=f["seeds"], device=CPU)
    np.testing.assert_array_equal(keys, np.concatenate([[0], f["keys"] + 1]))
    np.testing.assert_allclose(strided, f["cam"], atol=1e-5)
    np.testing.assert_allclose(cams, f["high_res"], atol=1e-5)


@needs_crf
def test_amn_seed_rule_matches_amn_cam_to_ir_label() -> None:
    f = fixture("amn_make_cam")
    fg, bg = make_irn_amn.AMN_SEED
    seeds = seeds_from_cams(f["image"], f["high_res"][1:], f["keys"] + 1, fg_threshold=fg,
                            bg_threshold=bg)
    np.testing.assert_array_equal(seeds, fixture("amn_cam_to_ir_label")["conf"])


def test_pcl_loss_matches_balanced_cross_entropy() -> None:
    from wsss.losses import pcl_loss

    f = fixture("amn_loss")
    loss = pcl_loss(torch.from_numpy(f["logits"]), torch.from_numpy(f["labels"]), 0.4)
    np.testing.assert_allclose(loss.item(), f["loss"], rtol=1e-6)


def test_label_resize_matches_resize_labels() -> None:
    f = fixture("amn_loss")
    out = downsample_labels(torch.from_numpy(f["big"]), f["resized"].shape[-2:])
    np.testing.assert_array_equal(out.numpy(), f["resized"])


# --- IRN indexing, pair labels, affinities, displacements, poly schedule, label CRF ------------


def test_path_index_matches_official() -> None:
    f = fixture("irn_indexing")
    index = PathIndex.build(5, (9, 13))
    np.testing.assert_array_equal(index.directions.numpy(), f["search_dst"])
    np.testing.assert_array_equal(index.src_indices.numpy(), f["src_indices"])
    np.testing.assert_array_equal(index.dst_indices.numpy(), f["dst_indices"])
    paths = sorted(k for k in f if k.startswith("path_indices_"))
    assert len(index.path_indices) == len(paths)
    for i, ours in enumerate(index.path_indices):
        np.testing.assert_array_equal(ours.numpy(), f[f"path_indices_{i}"])


def test_pair_labels_affinity_and_displacement_match_official() -> None:
    f = fixture("irn_indexing")
    index = PathIndex.build(5, (9, 13))
    for ours, name in zip(affinity_labels(torch.from_numpy(f["seg"]), index),
                          ("bg_pos", "fg_pos", "neg")):
        np.testing.assert_array_equal(ours.numpy(), f[name])
    aff = affinity_from_boundary(torch.sigmoid(torch.from_numpy(f["edge_logits"])), index)
    np.testing.assert_allclose(aff.numpy(), f["affinity"], atol=1e-7)
    disp = pair_displacement(torch.from_numpy(f["disp"]), index)
    np.testing.assert_allclose(disp.numpy(), f["pair_disp"], atol=1e-7)


def test_poly_schedule_matches_poly_optimizer() -> None:
    from wsss.engine.trainer import poly_lambda

    f = fixture("irn_indexing")
    factor = poly_lambda(7, 0.9)
    ours = np.array([[0.1 * factor(k), 1.0 * factor(k)] for k in range(7)])
    # Step 7 (= max_step) is past the end of training; the official optimizer keeps step 6's lr.
    np.testing.assert_allclose(ours, f["poly_lr"][:7], rtol=1e-12)


@needs_crf
def test_label_crf_matches_crf_inference_label() -> None:
    from wsss.ops.crf import dense_crf_labels

    f = fixture("crf_inference_label")
    pred = dense_crf_labels(f["image"], f["labels"], num_labels=4, gt_prob=0.7)
    np.testing.assert_array_equal(pred, f["pred"])
