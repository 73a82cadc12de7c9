"""How far the ground-truth VQGAN is from shift-equivariant: the latent of a moved face against the moved latent.

Run in the project folder after the train_vqgan_gt stage:

    python bench/moved_latents.py --clip cnn_anchor

For every move by one latent pixel (the encoder's stride in pixels, edges repeated, as
``dit.max_translation`` moves training items), prints the mean square difference between the
latent of the moved crops and the plain latent moved the same way, over the whole latent and
away from its edges, next to the latent variance. A large difference is why each moved view of
the faces is encoded into a latent cache of its own (``dithead.training.dit_data.precompute_latents``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from diffusers import VQModel

from dithead.data.store import ProcessedClip
from dithead.models.latents import encode_latents
from dithead.models.vqgan import downsample_factor
from dithead.training.dit_data import translate


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True)
    p.add_argument("--every", type=int, default=50, help="use every n-th frame with a face")
    p.add_argument("--edge", type=int, default=2, help="latent pixels left out at each edge for the inner figure")
    p.add_argument("--out", default="metrics/moved_latents.json")
    return p.parse_args()


def encode(vq: VQModel, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encode_latents(vq, torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)).numpy()


def main() -> None:
    args = parse_args()
    vq = VQModel.from_pretrained("models/vqgan_gt").eval()
    clip = ProcessedClip(f"data/processed/{args.clip}")
    crops = clip.crops(np.flatnonzero(np.asarray(clip.valid))[::args.every])
    plain = encode(vq, crops)
    stride = downsample_factor(vq)
    inner = (slice(None), slice(None), slice(args.edge, -args.edge), slice(args.edge, -args.edge))
    rows = []
    for dy, dx in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]:
        error = (encode(vq, translate(crops, stride * dy, stride * dx, axes=(1, 2)))
                 - translate(plain, dy, dx, axes=(2, 3))) ** 2
        rows.append({"dy": dy, "dx": dx, "mse": float(error.mean()), "mse_inner": float(error[inner].mean())})
        print(f"move {dy:+d} {dx:+d}: mean square difference {rows[-1]['mse']:.3f} "
              f"(inner {rows[-1]['mse_inner']:.3f}); latent variance {plain.var():.3f}")
    result = {"clip": args.clip, "frames": len(crops), "latent_variance": float(plain.var()), "moves": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
