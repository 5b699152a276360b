"""Image-level multi-label classification scores: exact-match accuracy, per-class AP, mAP."""

from __future__ import annotations

import torch


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Non-interpolated average precision of one class (mean precision at each positive).

    Args:
        scores: (N,) float; truth: (N,) bool with at least one True.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    hits = truth[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision * hits).sum() / hits.sum())


def multilabel_scores(logits: torch.Tensor, labels: torch.Tensor, *, decision: str = "logit"
                      ) -> dict[str, float]:
    """Scores of a multi-label classifier.

    Args:
        logits: (N, C) float; labels: (N, C) multi-hot.
        decision: which classes the classifier says are present: "logit" (logit > 0, a
            sigmoid classifier) or "top_k" (the k highest, k = the number of present classes:
            a softmax classifier has no absolute threshold).
    Returns:
        exact_match (share of images whose whole label set is right), mAP over the classes
        with a positive image, top1_precision (the top class is present), each in [0, 1].
    """
    positive = labels > 0
    if decision == "logit":
        predicted = logits > 0
    elif decision == "top_k":
        ranks = torch.argsort(torch.argsort(logits, dim=1, descending=True), dim=1)
        predicted = ranks < positive.sum(1, keepdim=True)
    else:
        raise ValueError(f"decision must be 'logit' or 'top_k', got {decision!r}")
    exact = (predicted == positive).all(1).double().mean().item()
    top1 = positive.gather(1, logits.argmax(1, keepdim=True)).double().mean().item()
    aps = [average_precision(logits[:, c], positive[:, c]) for c in range(labels.shape[1])
           if positive[:, c].any()]
    return {"exact_match": exact, "mAP": sum(aps) / len(aps) if aps else float("nan"),
            "top1_precision": top1}
