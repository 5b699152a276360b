"""One training step (forward, backward, SGD update) of every registered method.

Each method runs its own `training_step` on the same synthetic batch (2 images of 96x96, 4
classes, a saliency map, ResNet-18 from scratch, as the contract test) and reports the median wall time and
peak memory. 1-Stage's step is also run with the official-style PAMR of
`benchmarks/bench_pamr.py` patched in, the one per-step op `wsss` re-implements for speed; the
other steps are the same PyTorch modules as the official code, so they have no separate
reference. Usage:

    python benchmarks/bench_train_step.py [--repeats 3] [--size 96]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, compare, format_table, header, measure  # noqa: E402
from bench_pamr import pamr_reference  # noqa: E402

from wsss.config import load_config  # noqa: E402
from wsss.methods import METHODS, build_method  # noqa: E402

TINY = ["model.backbone=resnet18", "model.pretrained=none", "model.frozen_bn=false"]


def _step_fn(name: str, size: int):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + [f"method.name={name}"])
    method = build_method(cfg)
    model = method.build_model(num_classes=4)
    optimizer = torch.optim.SGD(method.param_groups(model, 0.01), lr=0.01)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(2, 3, size, size, generator=g),
        "labels": torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]),
        "mask": torch.zeros(2, size, size, dtype=torch.long),
        "name": ["a", "b"], "index": torch.tensor([0, 1]),
        "saliency": torch.rand(2, size, size, generator=g),  # auxsegnet's saliency input
    }
    model.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        terms = method.training_step(model, batch)
        loss = sum(terms.values())
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def run(repeats: int = 3, size: int = 96) -> list[Row]:
    rows = []
    for name in METHODS.names():
        step = _step_fn(name, size)
        if name == "one_stage":
            import wsss.methods.one_stage as one_stage

            fast = one_stage.pamr

            def official(images, masks, *, dilations, num_iter, kernel):
                return pamr_reference(images, masks, dilations=dilations, num_iter=num_iter)

            def ref_step():
                one_stage.pamr = official
                try:
                    return step()
                finally:
                    one_stage.pamr = fast

            ours, ref, ratio = compare(step, ref_step, repeats=repeats)
            rows.append(Row(f"train step {name}", ours.seconds, ref.seconds, "-", None,
                            ours.peak_mb, ref.peak_mb, "finite loss",
                            "ref = official-style PAMR", ratio_value=ratio))
            continue
        m = measure(step, repeats=repeats)
        assert torch.isfinite(torch.tensor(m.result)), name
        rows.append(Row(f"train step {name}", m.seconds, None, "-", None, m.peak_mb, None,
                        "finite loss"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    print(header(f"training steps, batch 2x3x{args.size}x{args.size}, resnet18"))
    print(format_table(run(args.repeats, args.size)))


if __name__ == "__main__":
    main()
