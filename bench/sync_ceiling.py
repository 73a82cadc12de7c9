"""How much lip sync the pipeline can show at all: the held-out ground truth as a perfect DiT would make it.

Run in a project folder after `dvc repro` with a time split (the held-out end of a clip has ground truth):

    python bench/sync_ceiling.py --clip cnn_anchor

Three videos of the clip's held-out frames, each pasted back with the mask the
`sample` stage uses, scored against the source by the `evaluate` stage's metrics:

- ``crop``: the ground truth's own face crops (the crop size's limit);
- ``vqgan``: those crops through the ground-truth VQGAN, encoded and decoded,
  i.e. the exact latent a perfect DiT would generate (the autoencoder's limit);
- ``vqgan_unquantised``: the same, decoded without snapping to the codebook.

A generated video cannot beat the ``vqgan`` row by more than noise. Prints a
Markdown table and writes it with the raw figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from dithead.data.mask import MaskSettings
from dithead.inference.pipeline import DiTHeadPipeline, SampleSettings
from dithead.metrics.evaluation import Evaluator
from dithead.models.latents import encode_latents, tensor_to_image
from dithead.params import load_params, section_config
from steps_quality import QUALITY, eval_config, held_out_audio, held_out_part, write_results  # noqa: E402  (bench/steps_quality.py)

BATCH = 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True, help="a clip of data/processed with a held-out part in models/dit/split.json")
    p.add_argument("--out", default="metrics/sync_ceiling.json")
    return p.parse_args()


@torch.no_grad()
def through_vqgan(vq, crops: np.ndarray, quantise: bool) -> np.ndarray:
    """(N, H, W, 3) uint8 crops encoded and decoded by ``vq`` (the ground-truth VQGAN), in batches."""
    out = []
    for first in range(0, len(crops), BATCH):
        images = torch.from_numpy(crops[first:first + BATCH]).permute(0, 3, 1, 2)
        latents = encode_latents(vq, images) / vq.config.scaling_factor
        out.append(tensor_to_image(vq.decode(latents, force_not_quantize=not quantise).sample.clamp(-1, 1)))
    return np.concatenate(out)


def main() -> None:
    args = parse_args()
    params = load_params()
    clip, (start, stop), _ = held_out_part(args.clip)
    fps = params["data"]["fps"]
    pipe = DiTHeadPipeline.from_pretrained("models", fps=fps, mask=section_config(MaskSettings, params["mask"], "mask"))
    settings = SampleSettings(seed=params["seed"], min_ref_distance=params["dit"]["min_ref_distance"])
    crops = clip.crops(start + np.arange(stop - start))
    variants = {"crop": lambda: crops,
                "vqgan": lambda: through_vqgan(pipe.vq_gt, crops, quantise=True),
                "vqgan_unquantised": lambda: through_vqgan(pipe.vq_gt, crops, quantise=False)}
    evaluator = Evaluator({}, eval_config(params))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        features = held_out_audio(clip, start, stop, fps, Path(work) / "audio.wav")
        for name, make in variants.items():
            video = Path(work) / f"{name}.mp4"
            pipe.paste_crops(clip, make(), len(features), Path(work) / "audio.wav", video, settings,
                             frames=(start, stop))
            metrics = evaluator.evaluate(video, Path(clip.meta["source"]["video"]), gt_start=start).report["metrics"]
            rows.append({"variant": name, **{k: metrics.get(k) for k in QUALITY}})
            print(rows[-1], flush=True)
    text = "\n".join(["| ceiling | " + " | ".join(QUALITY) + " |", "|" + "---|" * (len(QUALITY) + 1)]
                     + [f"| {r['variant']} | " + " | ".join(f"{r[c]:.3f}" for c in QUALITY) + " |" for r in rows])
    write_results(args.out, args.clip, (start, stop), rows, text)


if __name__ == "__main__":
    main()
