"""The two VQGANs of paper 3.2 (masked frames, ground-truth frames) and their training.

The autoencoder is diffusers' ``VQModel`` (LDM's first-stage architecture:
encoder, vector quantiser, decoder), saved with ``save_pretrained``. Its
training objective is taming-transformers' ``VQLPIPSWithDiscriminator``, as
LDM trains its VQ models:

    L = |x - x̂|_w  +  w_p · LPIPS(x, x̂)  +  w_q · L_codebook  +  λ · w_d · L_G(D(x̂))

with a PatchGAN discriminator D trained with the hinge loss from step
``disc_start`` on, and λ the adaptive weight ``‖∇L_rec‖ / ‖∇L_G‖`` taken at the
decoder's last layer so the adversarial term never drowns the reconstruction.
|x - x̂|_w is the L1 distance averaged with per-pixel weights: 1 everywhere
unless ``mouth_weight`` makes the box around the lips count more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import VQModel
from torch import nn

from dithead.data.mask import MaskSettings
from dithead.data.store import ProcessedClip
from dithead.device import check_precision
from dithead.metrics import image as image_metrics
from dithead.models.latents import tensor_to_image
from dithead.models.vqgan import NLayerDiscriminator, VQAutoencoder, build_vqmodel
from dithead.training.run import (Cadence, TrainingRun, check_minimums, checkpoint_settings, log_image, log_metrics,
                                  make_accelerator, make_dataloader, save_pretrained_atomic)
from dithead.training.vqgan_data import FrameDataset, crop_size, split_frames

# --------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossWeights:
    perceptual: float = 1.0
    codebook: float = 1.0
    disc: float = 0.75
    disc_start: int = 0  # optimizer steps completed before the discriminator takes part


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_disc_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor,
                         last_layer: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """``disc_weight · ‖∇_last L_rec‖ / ‖∇_last L_G‖`` (clamped, no gradient), as in taming-transformers."""
    rec_grads = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gen_grads = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = rec_grads.float().norm() / (gen_grads.float().norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters of ``module`` get no gradient inside (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def weighted_l1(images: torch.Tensor, reconstruction: torch.Tensor, pixel_weight: torch.Tensor) -> torch.Tensor:
    """Mean absolute error with (B, 1, H, W) ``pixel_weight``, normalised by the weights' mean: with weights
    of 1 it is the plain L1, and a weighted region counts more without changing the loss's scale."""
    return ((images - reconstruction).abs() * pixel_weight).mean() / pixel_weight.mean()


def generator_loss(images: torch.Tensor, reconstruction: torch.Tensor, codebook_loss: torch.Tensor, *,
                   pixel_weight: torch.Tensor, weights: LossWeights, perceptual: nn.Module | None,
                   discriminator: nn.Module | None,
                   last_layer: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The autoencoder's loss and its parts (detached, for logging).

    ``discriminator`` is None before ``disc_start``; when given it should be
    the plain module (not a DDP wrapper): its parameters are frozen here so
    only the autoencoder receives gradients.
    """
    l1 = weighted_l1(images, reconstruction, pixel_weight)
    reconstruction_loss = l1
    logs = {"l1": l1.detach(), "codebook": codebook_loss.detach()}
    if perceptual is not None and weights.perceptual > 0:
        distance = perceptual(images, reconstruction).mean()
        reconstruction_loss = reconstruction_loss + weights.perceptual * distance
        logs["perceptual"] = distance.detach()
    loss = reconstruction_loss + weights.codebook * codebook_loss
    if discriminator is not None:
        with frozen(discriminator):
            adversarial = -discriminator(reconstruction).mean()
        disc_weight = adaptive_disc_weight(reconstruction_loss, adversarial, last_layer, weights.disc)
        loss = loss + disc_weight * adversarial
        logs.update(adversarial=adversarial.detach(), disc_weight=disc_weight)
    logs["loss"] = loss.detach()
    return loss, logs


def discriminator_loss(discriminator: nn.Module, images: torch.Tensor,
                       reconstruction: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits_real = discriminator(images)
    logits_fake = discriminator(reconstruction.detach())
    loss = hinge_discriminator_loss(logits_real, logits_fake)
    return loss, {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                  "logits_fake": logits_fake.detach().mean()}


def codebook_usage(counts: torch.Tensor) -> tuple[float, float]:
    """(perplexity, fraction of codes used) of code-use ``counts``; perplexity = exp(entropy)."""
    counts = counts.double()
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float(torch.exp(-(p * p.log()).sum())), float((counts > 0).double().mean())


# --------------------------------------------------------------------------- validation


def reconstruction_metrics(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, list[float]]:
    """Per-image PSNR (dB) and SSIM of uint8 RGB batches (B, H, W, 3).

    The evaluate stage's own metrics (``dithead.metrics.image``: Gaussian-window
    SSIM), so training curves and evaluation results are comparable.
    """
    return {"psnr": [image_metrics.psnr(b, a) for a, b in zip(originals, reconstructions)],
            "ssim": [image_metrics.ssim(b, a) for a, b in zip(originals, reconstructions)]}


def comparison_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8) -> np.ndarray:
    """Originals on the top row, their reconstructions below (uint8 RGB)."""
    n = min(columns, len(originals))
    return np.concatenate([np.concatenate(list(originals[:n]), axis=1),
                           np.concatenate(list(reconstructions[:n]), axis=1)], axis=0)


@torch.no_grad()
def evaluate(vq: VQModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
             autocast=contextlib.nullcontext) -> tuple[dict[str, float], np.ndarray, float]:
    """Mean PSNR/SSIM on ``batches`` of (images, pixel weights), a comparison grid of the first images,
    and the latents' std."""
    was_training = vq.training
    vq.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    grid, latent_sq, latent_sum, latent_n = None, 0.0, 0.0, 0
    for images, _ in batches:
        images = images.to(device)
        with autocast():
            latents = vq.encode(images).latents
            reconstructions = vq.decode(latents).sample
        latents = latents.double()
        latent_sum += float(latents.sum())
        latent_sq += float((latents ** 2).sum())
        latent_n += latents.numel()
        originals, restored = tensor_to_image(images), tensor_to_image(reconstructions)
        for name, values in reconstruction_metrics(originals, restored).items():
            scores[name] += values
        if grid is None:
            grid = comparison_grid(originals, restored)
    vq.train(was_training)
    mean = latent_sum / latent_n
    std = math.sqrt(max(latent_sq / latent_n - mean ** 2, 1e-12))
    return {name: float(np.mean(values)) for name, values in scores.items()}, grid, std


# --------------------------------------------------------------------------- training


@dataclass
class VQGANTrainingConfig:
    """Everything one VQGAN training run depends on: the ``vqgan:`` params (same names, same defaults as
    params.yaml; tests/test_params.py checks), plus which VQGAN, ``seed`` and ``mask``."""

    masked: bool
    seed: int = 0
    mask: MaskSettings = field(default_factory=MaskSettings)
    # model
    channels: list[int] = field(default_factory=lambda: [128, 256, 512])
    layers_per_block: int = 2
    latent_channels: int = 3
    codebook_size: int = 8192
    norm_groups: int = 32
    disc_channels: int = 64
    disc_layers: int = 3
    # optimisation
    base_learning_rate: float = 4.5e-6
    batch_size: int = 12
    gradient_accumulation: int = 1
    steps: int = 100_000
    disc_start: int = 30_001
    disc_weight: float = 0.75
    perceptual_weight: float = 1.0
    codebook_weight: float = 1.0
    mouth_weight: float = 1.0
    mixed_precision: str = "auto"
    # bookkeeping
    log_every: int = 50
    eval_every: int = 2000
    image_every: int = 2000
    checkpoint_every: int = 2000
    val_frames: int = 256
    workers: int = 4

    def __post_init__(self):
        at_least = {"steps": 1, "batch_size": 1, "gradient_accumulation": 1, "log_every": 1, "eval_every": 1,
                    "image_every": 1, "checkpoint_every": 0, "val_frames": 0, "workers": 0, "disc_start": 0,
                    "base_learning_rate": 0, "disc_weight": 0, "perceptual_weight": 0, "codebook_weight": 0,
                    "mouth_weight": 0}
        check_minimums(self, at_least, "vqgan")
        check_precision(self.mixed_precision, "vqgan.mixed_precision")

    def loss_weights(self) -> LossWeights:
        return LossWeights(perceptual=self.perceptual_weight, codebook=self.codebook_weight,
                           disc=self.disc_weight, disc_start=self.disc_start)


class VQGANTrainer:
    """The autoencoder, discriminator and their optimizers, prepared by ``accelerator``, and one training step.

    Shared by ``train_vqgan`` and ``bench/train_vqgan.py``, so the benchmark
    times exactly the training step.
    """

    def __init__(self, accelerator, config: VQGANTrainingConfig, *, image_size: int, perceptual: nn.Module | None):
        self.accelerator = accelerator
        self.weights = config.loss_weights()
        vq = build_vqmodel(image_size=image_size, channels=config.channels, layers_per_block=config.layers_per_block,
                           latent_channels=config.latent_channels, codebook_size=config.codebook_size,
                           norm_groups=config.norm_groups)
        autoencoder = VQAutoencoder(vq)
        discriminator = NLayerDiscriminator(channels=config.disc_channels, layers=config.disc_layers)
        # LDM's rule: the rate is per sample of the effective batch.
        lr = config.base_learning_rate * config.batch_size * config.gradient_accumulation * accelerator.num_processes
        opt_ae = torch.optim.Adam(autoencoder.parameters(), lr=lr, betas=(0.5, 0.9))
        opt_disc = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
        self.autoencoder, self.discriminator, self.opt_ae, self.opt_disc = accelerator.prepare(
            autoencoder, discriminator, opt_ae, opt_disc)
        self.plain_autoencoder: VQAutoencoder = accelerator.unwrap_model(self.autoencoder)
        self.plain_discriminator: nn.Module = accelerator.unwrap_model(self.discriminator)
        self.perceptual = (perceptual.to(accelerator.device).eval().requires_grad_(False)
                           if perceptual is not None else None)

    def micro_step(self, images: torch.Tensor, pixel_weight: torch.Tensor,
                   step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One micro-batch of optimizer step ``step`` (1-based): autoencoder update, then discriminator update.

        ``pixel_weight`` (B, 1, H, W) weights the reconstruction loss (``FrameDataset``).

        The optimizers step on the last micro-batch of a gradient-accumulation
        cycle. Returns the detached loss parts and the code indices used.
        """
        accelerator = self.accelerator
        images = images.to(accelerator.device, non_blocking=True)
        pixel_weight = pixel_weight.to(accelerator.device, non_blocking=True)
        disc_active = step > self.weights.disc_start
        with accelerator.accumulate(self.autoencoder, self.discriminator), accelerator.autocast():
            reconstruction, codebook_loss, codes = self.autoencoder(images)
            loss, logs = generator_loss(
                images, reconstruction, codebook_loss, pixel_weight=pixel_weight, weights=self.weights,
                perceptual=self.perceptual, discriminator=self.plain_discriminator if disc_active else None,
                last_layer=self.plain_autoencoder.last_layer)
            accelerator.backward(loss)
            self.opt_ae.step()
            self.opt_ae.zero_grad(set_to_none=True)
            if disc_active:
                d_loss, d_logs = discriminator_loss(self.discriminator, images, reconstruction)
                accelerator.backward(d_loss)
                self.opt_disc.step()
                self.opt_disc.zero_grad(set_to_none=True)
                logs.update(d_logs)
        return logs, codes


def train_vqgan(clips: Sequence[ProcessedClip], config: VQGANTrainingConfig, *, output_dir: str | Path,
                checkpoint_dir: str | Path, live_dir: str | Path, perceptual: nn.Module | None = None) -> dict[str, float]:
    """Train one VQGAN on the valid frames of ``clips`` and save it to ``output_dir``.

    Resumes from ``checkpoint_dir`` when it holds a checkpoint of the same run;
    logs to dvclive in ``live_dir``. ``perceptual`` is the LPIPS network (any
    module mapping two image batches in [-1, 1] to per-sample distances);
    required when ``config.perceptual_weight > 0``. Returns the final
    validation metrics (measured by the main process; ``{}`` on the others).
    Raises ``TrainingInterrupted`` after saving a checkpoint when SIGTERM/SIGINT
    arrives.
    """
    if config.perceptual_weight > 0 and perceptual is None:
        raise ValueError(f"perceptual_weight is {config.perceptual_weight} but no LPIPS network was given")
    accelerator = make_accelerator(mixed_precision=config.mixed_precision,
                                   gradient_accumulation_steps=config.gradient_accumulation, seed=config.seed)
    device = accelerator.device

    size = crop_size(clips)
    train_rows, val_rows = split_frames(clips, config.val_frames)
    train_set = FrameDataset(clips, masked=config.masked, mask=config.mask, seed=config.seed, frames=train_rows,
                             mouth_weight=_mouth_weight(config))
    val_set = FrameDataset(clips, masked=config.masked, mask=replace(config.mask, max_shift=0), seed=config.seed,
                           frames=val_rows) if len(val_rows) else None

    trainer = VQGANTrainer(accelerator, config, image_size=size, perceptual=perceptual)

    run = TrainingRun(accelerator, steps=config.steps,
                      samples_per_step=config.batch_size * config.gradient_accumulation * accelerator.num_processes,
                      desc=f"vqgan {'masked' if config.masked else 'gt'}", checkpoint_dir=checkpoint_dir,
                      fingerprint=run_fingerprint(config, clips), live_dir=live_dir,
                      cadence=Cadence(log_every=config.log_every, validate_every=config.eval_every,
                                      image_every=config.image_every, checkpoint_every=config.checkpoint_every))
    live = run.live
    batches = iter(make_dataloader(train_set, batch_size=config.batch_size, accelerator=accelerator,
                                   seed=config.seed, start_step=run.start, workers=config.workers))

    plain_autoencoder = trainer.plain_autoencoder
    window = _MetricWindow(config.codebook_size, device)

    def validate(step: int, with_images: bool) -> tuple[dict[str, float], float | None]:
        """Held-out metrics and the latents' std, measured by the main process alone (the others get ``{}, None``)."""
        metrics, latent_std = {}, None
        if accelerator.is_main_process and val_set is not None:
            metrics, grid, latent_std = evaluate(plain_autoencoder.vq, _batches_of(val_set, config.batch_size),
                                                 device, accelerator.autocast)
            log_metrics(live, step, {f"val/{k}": v for k, v in metrics.items()})
            if with_images:
                log_image(live, step, "reconstructions.png", grid)
        accelerator.wait_for_everyone()
        return metrics, latent_std

    def preview(step: int) -> None:
        if accelerator.is_main_process and val_set is not None:
            _, grid, _ = evaluate(plain_autoencoder.vq, [next(iter(_batches_of(val_set, 8)))], device,
                                  accelerator.autocast)
            log_image(live, step, "reconstructions.png", grid)
        accelerator.wait_for_everyone()

    def train_step(step: int) -> None:
        for _ in range(config.gradient_accumulation):
            logs, codes = trainer.micro_step(*next(batches), step)
            window.add(logs, codes)

    run.loop(step=train_step, train_metrics=lambda step, rate: {**window.means(accelerator), "train/images_per_s": rate},
             validate=validate, images=preview)
    final, latent_std = validate(config.steps, with_images=True)
    vq = plain_autoencoder.vq
    if latent_std is not None:
        # Unit-variance latents for the diffusion model, like Stable Diffusion's scaling factor.
        vq.register_to_config(scaling_factor=1.0 / latent_std)
    save_pretrained_atomic(accelerator, output_dir, vq)
    run.finish()
    return final


# How often the VQGAN stage validates and draws images: no effect on the weights.
_BOOKKEEPING = {"eval_every", "image_every"}


def run_fingerprint(config: VQGANTrainingConfig, clips: Sequence[ProcessedClip]) -> dict:
    """What a checkpoint must have been trained with to be resumed: the params and the data itself."""
    return {"config": _fingerprint_config(config), "data": {clip.name: clip.fingerprint() for clip in clips}}


def _mouth_weight(config: VQGANTrainingConfig) -> float:
    """The ground-truth VQGAN's lip-box loss weight; the masked VQGAN never sees the lips, so 1 there."""
    return 1.0 if config.masked else config.mouth_weight


def _fingerprint_config(config: VQGANTrainingConfig) -> dict:
    """The settings a checkpoint depends on (mask settings only matter for the masked VQGAN, the mouth
    weight only for the ground-truth one; at 1 it is the loss of checkpoints made before it existed)."""
    settings = checkpoint_settings(asdict(config), _BOOKKEEPING)
    if _mouth_weight(config) == 1:
        settings.pop("mouth_weight")
    return {k: v for k, v in settings.items() if config.masked or not k.startswith("mask_")}


def _batches_of(dataset: FrameDataset, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        yield tuple(torch.stack(parts) for parts in zip(*items))


class _MetricWindow:
    """Running means of the loss parts and code-use counts since the last log."""

    def __init__(self, codebook_size: int, device: torch.device):
        self.codebook_size = codebook_size
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.codes = torch.zeros(self.codebook_size, dtype=torch.long, device=self.device)

    def add(self, logs: dict[str, torch.Tensor], codes: torch.Tensor) -> None:
        for name, value in logs.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
            self.counts[name] = self.counts.get(name, 0) + 1
        self.codes += torch.bincount(codes.detach(), minlength=self.codebook_size)

    def means(self, accelerator) -> dict[str, float]:
        names = sorted(self.sums)
        values = torch.stack([self.sums[n] / self.counts[n] for n in names]) if names else torch.zeros(0, device=self.device)
        values = accelerator.reduce(values, reduction="mean")
        codes = accelerator.reduce(self.codes, reduction="sum")
        perplexity, used = codebook_usage(codes)
        out = {f"train/{n}": float(v) for n, v in zip(names, values)}
        out.update({"train/codebook_perplexity": perplexity, "train/codebook_used": used})
        self.reset()
        return out
