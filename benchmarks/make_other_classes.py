"""Write a VOC-layout data set with other classes and image sizes than the built-in synthetic one.

Eight classes, each a corpus category of `wsss.data.pretrain_corpus` (one per silhouette, with
varied textures, colour families and parts), 1-3 objects per image, square images of 128-224 px.
Presets run on it unchanged:
`wsss run synthetic/demo --set data.root=DIR data.dataset=custom`.

    python benchmarks/make_other_classes.py --out data/other-classes [--num-train 800 --num-val 200]
"""

from __future__ import annotations

import argparse
import time

from wsss.data.pretrain_corpus import SHAPES, TEXTURES, categories, write_voc_layout

# One category per silhouette; texture, colour family and part rotate so no factor is constant.
OTHER_CLASSES = [
    next(i for i, c in enumerate(categories())
         if c.shape == shape and c.texture == TEXTURES[k % len(TEXTURES)]
         and c.colour == ("warm", "cool")[k % 2] and c.part == ("plain", "disc")[(k // 2) % 2])
    for k, shape in enumerate(SHAPES)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    root = write_voc_layout(args.out, class_categories=OTHER_CLASSES, num_train=args.num_train,
                            num_val=args.num_val, seed=args.seed)
    names = [categories()[c].name for c in OTHER_CLASSES]
    print(f"wrote {args.num_train} train / {args.num_val} val images of {len(names)} classes "
          f"({', '.join(names)}) to {root} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
