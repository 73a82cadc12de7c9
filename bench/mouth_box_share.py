"""How much of the DiT's loss weight falls in the box around the lips, for each ``dit.mouth_weight``.

Run in the project folder after the preprocess stage:

    python bench/mouth_box_share.py --clip cnn_anchor --mouth-weights 1 3

Reads the mask and loss-weight settings from params.yaml, builds each sampled training frame's
hidden-region mask and lips box exactly as the DiT's data does, and prints the box's share of the
crop and of the per-latent-position loss weight (``dithead.models.dit.masked_region_weight``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dithead.data.mask import lower_face_mask, mouth_box_mask
from dithead.data.store import ProcessedClip
from dithead.models.dit import masked_region_weight
from dithead.params import load_params

LATENT_DOWNSAMPLING = 4     # the VQGANs' f = 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True)
    p.add_argument("--mouth-weights", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--every", type=int, default=10, help="use every n-th frame of the training part")
    p.add_argument("--train-fraction", type=float, default=0.8, help="frames before this share of the clip")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    params = load_params()
    mask, dit = params["mask"], params["dit"]
    clip = ProcessedClip(f"data/processed/{args.clip}")
    frames = np.arange(0, int(len(clip) * args.train_fraction), args.every)
    frames = frames[np.asarray(clip.valid)[frames]]
    size = clip.crop(int(frames[0])).shape[:2]
    latent = (size[0] // LATENT_DOWNSAMPLING, size[1] // LATENT_DOWNSAMPLING)
    box_area, shares = [], {w: [] for w in args.mouth_weights}
    for frame in frames:
        landmarks = np.asarray(clip.landmarks[frame])
        hidden = torch.from_numpy(lower_face_mask(landmarks, size, mask["kernel_size"], mask["sigma"],
                                                  region=mask["region"]))[None, None]
        box = torch.from_numpy(mouth_box_mask(landmarks, size))[None, None]
        in_box = torch.nn.functional.avg_pool2d(box, LATENT_DOWNSAMPLING)      # box share of each latent position
        box_area.append(float(box.mean()))
        for w in args.mouth_weights:
            weight = masked_region_weight(hidden, latent, dit["masked_region_weight"]) * masked_region_weight(box, latent, w)
            shares[w].append(float((weight * in_box).sum() / weight.sum()))
    print(f"{args.clip}: {len(frames)} frames; lips box {100 * np.mean(box_area):.1f} % of the crop")
    for w, values in shares.items():
        print(f"mouth_weight {w:g}: lips box carries {100 * np.mean(values):.1f} % of the loss weight")


if __name__ == "__main__":
    main()
