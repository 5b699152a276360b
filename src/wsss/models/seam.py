"""SEAM's siamese CAM network with the pixel correlation module (Wang et al., arXiv:2004.04581),
in its SEAM and ICAM (arXiv:2203.12459) forms.

Follows `YudeWang/SEAM: network/resnet38_SEAM.py` and `arvijj/icam: network/resnet38_cam.py`
(importance_sampling.md §2). Works on any backbone returning four maps; the PCM taps are the
second and third maps (ResNet-38: `conv4` 512 ch and `conv5` 1024 ch at stride 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SeamNet", "pcm_input", "pixel_correlation"]


def pixel_correlation(cams: Tensor, feats: Tensor, *, eps: float = 1e-5) -> Tensor:
    """Pixel correlation module: CAMs re-estimated as affinity-weighted sums over all pixels.

    g = feats / (‖feats‖₂ over channels + eps); A = ReLU(gᵀg) (B, N, N); A normalised so that
    each column sums to 1 (Σ_i A_ij = 1, + eps); out = cams (B, K, N) @ A.

    Args:
        cams: (B, K, h, w).
        feats: (B, D, h, w) PCM embedding.

    Returns:
        (B, K, h, w).
    """
    b, k, h, w = cams.shape
    g = feats.flatten(2)
    g = g / (g.norm(dim=1, keepdim=True) + eps)
    affinity = F.relu(torch.bmm(g.transpose(1, 2), g))
    affinity = affinity / (affinity.sum(1, keepdim=True) + eps)
    return torch.bmm(cams.flatten(2), affinity).reshape(b, k, h, w)


@torch.no_grad()
def pcm_input(logits: Tensor, *, eps: float = 1e-5) -> Tensor:
    """SEAM's PCM input from raw CAM logits (no gradient).

    c = ReLU(logits); c = ReLU(c − eps) / (max_hw(c) + eps) per channel; channel 0 ← 1 − max
    over the foreground channels; foreground entries below the per-pixel foreground maximum ← 0.

    Args:
        logits: (B, C+1, h, w), background first.

    Returns:
        (B, C+1, h, w) in [0, 1].
    """
    c = F.relu(logits.detach())
    c = F.relu(c - eps) / (c.flatten(2).amax(-1)[..., None, None] + eps)
    fg = c[:, 1:]
    top = fg.amax(1, keepdim=True)
    fg = torch.where(fg < top, torch.zeros_like(fg), fg)
    return torch.cat([1.0 - top, fg], dim=1)


class SeamNet(nn.Module):
    """Backbone → Dropout2d → 1×1 classifier over C+1 channels (background first) + PCM.

    Args:
        backbone: returns four maps and exposes `out_channels`.
        num_classes: C foreground classes.
        pcm_on_logits: ICAM: PCM runs on the raw logits with gradient; SEAM (False): on the
            detached, normalised `pcm_input`.
        dropout: Dropout2d rate before the classifier (0.5).
        learn_fsl: adds the learnable FSL parameters μ (`fsl_mu`) and log σ (`fsl_log_sigma`)
            of the paper, initialised at `fsl_mu` / `fsl_sigma`.
    """

    def __init__(self, *, backbone: nn.Module, num_classes: int, pcm_on_logits: bool = True,
                 dropout: float = 0.5, learn_fsl: bool = False, fsl_mu: float = 2.5,
                 fsl_sigma: float = 5.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.pcm_on_logits = pcm_on_logits
        channels = backbone.out_channels
        self.dropout = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(channels[-1], num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.f8_3 = nn.Conv2d(channels[1], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(channels[2], 128, 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        self.f9 = nn.Conv2d(3 + 64 + 128, 192, 1, bias=False)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.fsl_mu: nn.Parameter | None = None
        self.fsl_log_sigma: nn.Parameter | None = None
        if learn_fsl:
            self.fsl_mu = nn.Parameter(torch.tensor(float(fsl_mu)))
            self.fsl_log_sigma = nn.Parameter(torch.tensor(float(fsl_sigma)).log())

    @property
    def output_stride(self) -> int:
        return int(getattr(self.backbone, "output_stride", 8))

    def new_parameters(self) -> list[nn.Parameter]:
        """Randomly initialised parameters (the 10× learning-rate group)."""
        params = [self.fc8.weight, self.f8_3.weight, self.f8_4.weight, self.f9.weight]
        return params + [p for p in (self.fsl_mu, self.fsl_log_sigma) if p is not None]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) normalised → `logits` (B, C+1, h, w) raw classifier output and
        `logits_rv` (B, C+1, h, w) its PCM re-estimate, (h, w) the size of the last map."""
        feats = self.backbone(images)
        top = feats[-1]
        size = top.shape[-2:]
        logits = self.fc8(self.dropout(top))

        def tap(x: Tensor) -> Tensor:  # ResNet-18 at stride 16: the stride-8 tap is resized
            x = x.detach()
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            return x

        f8_3 = F.relu(self.f8_3(tap(feats[1])))
        f8_4 = F.relu(self.f8_4(tap(feats[2])))
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        embed = self.f9(torch.cat([small, f8_3, f8_4], dim=1))
        source = logits if self.pcm_on_logits else pcm_input(logits)
        return {"logits": logits, "logits_rv": pixel_correlation(source, embed)}
