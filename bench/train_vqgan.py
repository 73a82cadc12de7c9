"""Training throughput of one VQGAN: images/s of the real training step (and peak GPU memory).

Times ``dithead.training.train_vqgan.VQGANTrainer.micro_step`` (autoencoder + discriminator
updates, adaptive GAN weight, optional LPIPS) on random images, so the figure
is the model's cost without data loading. Defaults are tiny; examples:

    python bench/train_vqgan.py                                   # smoke-sized model on CPU
    python bench/train_vqgan.py --preset paper --size 256 --batch-size 12 --steps 30 --device cuda
    python bench/train_vqgan.py --preset paper --device cuda --perceptual --mixed-precision bf16

``--preset paper`` takes the ``vqgan:`` section of params.yaml, ``smoke``
that section with profiles/smoke.yaml applied; flags override it. LPIPS uses
randomly initialised AlexNet weights (same cost as the real ones).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def vqgan_params(preset: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["vqgan"]
    if preset == "smoke":
        params.update(yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text()).get("vqgan", {}))
    return params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("smoke", "paper"), default="smoke")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, help="per device (default: the preset's)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (after 2 warm-up steps)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--mixed-precision", choices=("auto", "bf16", "fp16", "no"), default="auto")
    parser.add_argument("--no-disc", action="store_true", help="time the steps before disc_start (no discriminator)")
    parser.add_argument("--perceptual", action="store_true", help="include the LPIPS term (random AlexNet)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (keep low on shared machines)")
    args = parser.parse_args()

    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    torch.set_num_threads(args.threads)

    from dithead.models.lpips import LPIPS
    from dithead.training.run import make_accelerator
    from dithead.training.train_vqgan import VQGANTrainer, VQGANTrainingConfig

    params = vqgan_params(args.preset)
    params.update(mixed_precision=args.mixed_precision, perceptual_weight=1.0 if args.perceptual else 0.0,
                  disc_start=10 ** 9 if args.no_disc else 0)
    if args.batch_size:
        params["batch_size"] = args.batch_size
    config = VQGANTrainingConfig(masked=False, **params)
    accelerator = make_accelerator(mixed_precision=config.mixed_precision,
                                   gradient_accumulation_steps=config.gradient_accumulation, seed=0)
    perceptual = LPIPS.random_init() if args.perceptual else None
    trainer = VQGANTrainer(accelerator, config, image_size=args.size, perceptual=perceptual)
    images = torch.rand(config.batch_size, 3, args.size, args.size) * 2 - 1
    pixel_weight = torch.ones(config.batch_size, 1, args.size, args.size)

    def run(steps: int, first_step: int) -> None:
        for step in range(first_step, first_step + steps):
            for _ in range(config.gradient_accumulation):
                trainer.micro_step(images, pixel_weight, step)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    run(2, first_step=1)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(args.steps, first_step=3)
    elapsed = time.perf_counter() - start

    n_params = sum(p.numel() for p in trainer.plain_autoencoder.parameters())
    images_done = args.steps * config.batch_size * config.gradient_accumulation
    print(f"preset {args.preset}: channels {config.channels}, codebook {config.codebook_size}, "
          f"{n_params / 1e6:.2f}M autoencoder parameters, {args.size}x{args.size}, batch {config.batch_size}"
          f" x{config.gradient_accumulation}, discriminator {'off' if args.no_disc else 'on'}, "
          f"LPIPS {'on' if args.perceptual else 'off'}, precision {accelerator.mixed_precision}, device {accelerator.device}")
    print(f"training: {images_done / elapsed:.1f} images/s ({elapsed / args.steps * 1000:.0f} ms/step)")
    if accelerator.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB "
              f"({torch.cuda.get_device_name()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
