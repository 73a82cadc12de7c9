"""Training of the DiT (paper 3.3, 3.6) with the frozen VQGAN encoders.

Diffusion as in ADM (``dithead.models.dit.make_noise_scheduler``), epsilon
prediction and MSE, AdamW at a constant learning rate, an EMA of the weights
(diffusers ``EMAModel``). Distributed training and mixed precision are
``accelerate``'s; checkpoints, resume, signals and logging are
``dithead.training.run``'s, as for the VQGANs.

The output directory holds the raw weights (``save_pretrained``), the EMA
weights in ``ema/``, the training noise schedule in ``scheduler/`` and the
identity split in ``split.json`` (which clips are held out).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import VQModel
from diffusers.training_utils import EMAModel

from dithead.data.mask import MaskSettings
from dithead.data.store import ProcessedClip
from dithead.device import check_precision
from dithead.fileio import atomic_path
from dithead.inference.sampling import make_scheduler, sample_independent
from dithead.models.dit import (DIT_PRESETS, DiTHead, diffusion_loss, dit_config, make_noise_scheduler,
                                masked_region_weight)
from dithead.models.latents import decode_latents, encode_latents, model_fingerprint, tensor_to_image
from dithead.training.dit_data import (DiTDataset, LazyArrays, audio_feature_paths, evenly_spaced,
                                       file_sha256, precompute_latents)
from dithead.training.run import (Cadence, TrainingRun, check_minimums, checkpoint_settings, log_image, log_metrics,
                                  make_accelerator, make_dataloader)
from dithead.training.split import (DataSplit, FrameRangeView, SplitSettings, held_out_frames, make_split,
                                    reference_clips, valid_frames)

SPLIT_FILE = "split.json"


@dataclass
class DiTTrainingConfig:
    """Everything one DiT training run depends on: the ``dit:`` params (same names, same defaults as
    params.yaml; tests/test_params.py checks), plus ``seed``, ``mask``, ``split`` and ``data.fps``."""

    seed: int = 0
    mask: MaskSettings = field(default_factory=MaskSettings)
    # model: a preset of DIT_PRESETS, optionally resized (None keeps the preset's value)
    preset: str = "DiT-L/2"
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    adaln: bool = False
    audio_adaln: bool = False
    dropout: float = 0.0
    audio_dropout: float = 0.0          # share of training items whose audio window is the mean window (guidance's null)
    audio_noise: float = 0.0            # std of Gaussian noise on each training item's standardised audio; 0: none
    gradient_checkpointing: bool = False
    # data
    audio_window: int = 11
    min_ref_distance: int = 60
    mirror_probability: float = 0.0     # training items mirrored left-right (target, reference, masked frame)
    max_translation: int = 0            # training items moved by up to this many latent pixels each way; 0: never
    cache_masked_latents: bool = False  # encode every mask shift of every training frame once, not every item
    split: SplitSettings = field(default_factory=SplitSettings)
    fps: float = 25.0                   # frames per second of the preprocessed clips (time split's gap)
    val_samples: int = 64
    # diffusion and optimisation
    diffusion_steps: int = 1000
    snr_gamma: float | None = None      # Min-SNR-gamma loss weighting; None: the paper's plain MSE
    masked_region_weight: float = 1.0   # loss weight of the hidden lower face against the rest; 1: the paper's MSE
    mouth_weight: float = 1.0           # and of the box around the lips on top of that; 1: no extra weight
    learning_rate: float = 1e-4
    audio_learning_rate_scale: float = 1.0  # the audio path's learning rate over learning_rate; 1: one rate for all
    weight_decay: float = 0.0
    batch_size: int = 32                # per process and micro-step
    gradient_accumulation: int = 2
    steps: int = 200_000
    ema_decay: float = 0.9999
    mixed_precision: str = "auto"
    # bookkeeping
    log_every: int = 100
    val_every: int = 5000
    sample_every: int = 10_000
    sample_count: int = 4
    sample_steps: int = 50
    checkpoint_every: int = 5000
    workers: int = 4
    latent_batch_size: int = 64

    def __post_init__(self):
        at_least = {"steps": 1, "batch_size": 1, "gradient_accumulation": 1, "log_every": 1, "val_every": 1,
                    "sample_every": 1, "sample_count": 1, "sample_steps": 1, "checkpoint_every": 0, "workers": 0,
                    "latent_batch_size": 1, "val_samples": 0, "audio_window": 1, "min_ref_distance": 0,
                    "diffusion_steps": 1, "learning_rate": 0, "audio_learning_rate_scale": 0, "weight_decay": 0,
                    "ema_decay": 0, "audio_noise": 0,
                    "masked_region_weight": 0, "mouth_weight": 0, "max_translation": 0}
        check_minimums(self, at_least, "dit")
        for name in ("depth", "hidden_size", "num_heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"dit.{name} must be null (the preset's value) or >= 1, not {getattr(self, name)}")
        if self.preset not in DIT_PRESETS:
            raise ValueError(f"dit.preset must be one of {', '.join(DIT_PRESETS)}, not {self.preset!r}")
        size = dit_config(self.preset, hidden_size=self.hidden_size, num_heads=self.num_heads)
        if size["hidden_size"] % size["num_heads"]:
            raise ValueError(f"dit.hidden_size ({size['hidden_size']}) must be divisible by "
                             f"dit.num_heads ({size['num_heads']})")
        if self.audio_window % 2 == 0:
            raise ValueError(f"dit.audio_window must be odd (the frame and as many on either side), "
                             f"not {self.audio_window}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"dit.snr_gamma must be null or > 0, not {self.snr_gamma}")
        if self.audio_adaln and not self.adaln:
            raise ValueError("dit.audio_adaln needs dit.adaln: true (the audio joins the adaLN modulation)")
        if not 0 <= self.mirror_probability <= 1:
            raise ValueError(f"dit.mirror_probability must be in [0, 1], not {self.mirror_probability}")
        if not 0 <= self.audio_dropout <= 1:
            raise ValueError(f"dit.audio_dropout must be in [0, 1], not {self.audio_dropout}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dit.dropout must be in [0, 1), not {self.dropout}")
        if self.ema_decay > 1:
            raise ValueError(f"dit.ema_decay must be in [0, 1], not {self.ema_decay}")
        if self.sample_steps > self.diffusion_steps:
            raise ValueError(f"dit.sample_steps ({self.sample_steps}) must be <= dit.diffusion_steps "
                             f"({self.diffusion_steps})")
        check_precision(self.mixed_precision, "dit.mixed_precision")


# How often the DiT stage validates and draws previews, and how it batches the
# latent cache (reused across batch sizes): no effect on the weights.
_BOOKKEEPING = {"val_every", "sample_every", "sample_count", "sample_steps", "latent_batch_size"}


def _fingerprint_config(config: DiTTrainingConfig) -> dict:
    """The settings a checkpoint depends on."""
    return checkpoint_settings(asdict(config), _BOOKKEEPING)


@dataclass
class _Data:
    train: DiTDataset
    validation: DiTDataset | None
    split: DataSplit
    audio_dim: int
    latent_shape: tuple[int, int, int]


def _prepare_data(clips: Sequence[ProcessedClip], config: DiTTrainingConfig, features_dir: Path,
                  vq_gt: VQModel, vq_masked: VQModel, latent_cache_dir: Path, accelerator) -> _Data:
    split = make_split(clips, config.split, config.seed, config.fps)
    feature_paths, audio_dim = audio_feature_paths(clips, features_dir)
    latent_paths = precompute_latents(vq_gt, clips, latent_cache_dir, batch_size=config.latent_batch_size,
                                      accelerator=accelerator, mirrored=config.mirror_probability > 0,
                                      max_translation=config.max_translation)
    latents, features = LazyArrays(latent_paths), LazyArrays(feature_paths)
    common = dict(latents=latents, features=features, min_ref_distance=config.min_ref_distance,
                  audio_window=config.audio_window, seed=config.seed)
    mask = config.mask
    # Training reads each clip through its training range only (a time split holds out its end).
    train_views = [FrameRangeView(clip, *split.train_frames.get(clip.name, (0, 0))) for clip in clips]
    train_rows = valid_frames(train_views)
    if len(train_rows) == 0:
        raise ValueError(f"no frames with a face in the training clips {split.train}")
    masked_latents = None
    if config.cache_masked_latents:                                 # the training frames' only
        masked_latents = LazyArrays(precompute_latents(
            vq_masked, train_views, latent_cache_dir / "masked", batch_size=config.latent_batch_size,
            accelerator=accelerator, mirrored=config.mirror_probability > 0,
            max_translation=config.max_translation, mask=mask))
    train = DiTDataset(train_views, train_rows, mask=mask, mirror_probability=config.mirror_probability,
                       max_translation=config.max_translation, masked_latents=masked_latents, **common)
    val_rows = evenly_spaced(held_out_frames(clips, split), config.val_samples)
    # Validation items are fixed: no mask shift, references drawn from the seed (from the training
    # part of the clip under a time split, as a user dubbing their own footage would).
    validation = DiTDataset(reference_clips(clips, split), val_rows, mask=dataclasses.replace(mask, max_shift=0),
                            **common) if len(val_rows) else None
    latent_shape = tuple(latents[clips[0].name].shape[1:])
    return _Data(train, validation, split, audio_dim, latent_shape)


def training_audio(dataset: DiTDataset) -> torch.Tensor:
    """(M, D) audio features of the training frames, for the model's audio standardisation."""
    rows = [dataset.features[dataset.clips[c].name][f] for c, f in dataset.frames]
    return torch.from_numpy(np.asarray(rows, dtype=np.float32))


def build_model(config: DiTTrainingConfig, latent_shape: tuple[int, int, int], audio_dim: int) -> DiTHead:
    channels, height, width = latent_shape
    if height != width:
        raise ValueError(f"latents are {height}x{width}; the DiT expects square latents")
    model = DiTHead(**dit_config(config.preset, depth=config.depth, hidden_size=config.hidden_size,
                                 num_heads=config.num_heads, sample_size=height, latent_channels=channels,
                                 audio_dim=audio_dim, audio_window=config.audio_window, adaln=config.adaln,
                                 audio_adaln=config.audio_adaln, dropout=config.dropout))
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def parameter_groups(model: DiTHead, config: DiTTrainingConfig) -> list[dict]:
    """AdamW groups: the audio path (``DiTHead.audio_parameters``) at ``learning_rate x
    audio_learning_rate_scale``, the rest at ``learning_rate``."""
    audio = model.audio_parameters()
    audio_ids = {id(p) for p in audio}
    rest = [p for p in model.parameters() if id(p) not in audio_ids]
    return [{"params": rest, "lr": config.learning_rate},
            {"params": audio, "lr": config.learning_rate * config.audio_learning_rate_scale}]


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


def _conditions(batch: dict[str, torch.Tensor], vq_masked: VQModel, autocast) -> dict[str, torch.Tensor]:
    """The model's inputs from a dataset batch; masked frames are encoded here (new mask shift each time),
    unless the batch brings their latents from the cache (``dit.cache_masked_latents``)."""
    if "masked_latent" in batch:
        masked = batch["masked_latent"]
    else:
        with autocast():
            masked = encode_latents(vq_masked, batch["masked"]).float()
    return dict(latents=batch["latent"], masked=masked, reference=batch["reference"], audio=batch["audio"])


def drop_audio(audio: torch.Tensor, mean: torch.Tensor, probability: float,
               generator: torch.Generator) -> torch.Tensor:
    """``audio`` (B, window, D) with each item's window replaced by ``mean`` (D,) with ``probability``.

    The mean window is the unconditional input of audio guidance
    (``dithead.inference.sampling.AudioGuidance``); training on it now and then
    teaches the model what to predict without the audio, classifier-free
    guidance's condition dropout (Ho & Salimans, 2022).
    """
    if probability == 0:
        return audio
    dropped = torch.rand(audio.shape[0], generator=generator, device=generator.device) < probability
    return torch.where(dropped.to(audio.device)[:, None, None], mean.to(audio), audio)


def noisy_audio(audio: torch.Tensor, std: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``audio`` (B, window, D) plus Gaussian noise of ``scale`` times each feature's training ``std`` (D,).

    Noise on a regression's inputs acts as ridge regularisation of the map it
    learns (Bishop, 1995): on 55 s of one speaker, the linear map from these
    windows to the mouth opening predicts held-out frames best under strong
    shrinkage (bench/audio_predictability.py). Training only; 0 draws nothing.
    """
    if scale == 0:
        return audio
    noise = torch.randn(audio.shape, generator=generator, device=generator.device).to(audio)
    return audio + scale * std.to(audio) * noise


def _region_weight(batch: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
                   config: DiTTrainingConfig) -> torch.Tensor | None:
    """Per-latent-position loss weights: the hidden region's weight, times the mouth box's; None when both are 1."""
    size = tuple(inputs["latents"].shape[-2:])
    weights = [masked_region_weight(batch[region], size, weight)
               for region, weight in (("mask", config.masked_region_weight), ("mouth", config.mouth_weight))
               if weight != 1]
    return torch.stack(weights).prod(dim=0) if weights else None


def _collate(dataset: DiTDataset, first: int, stop: int) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in range(first, stop)]
    return {name: torch.stack([item[name] for item in items]) for name in items[0]}


# Inputs swapped for the same input of another held-out frame, to measure what each one contributes.
SWAPPABLE = ("audio", "reference", "masked")


@torch.no_grad()
def validation_inputs(dataset: DiTDataset, vq_masked: VQModel, *, batch_size: int, device: torch.device,
                      autocast) -> dict[str, torch.Tensor]:
    """Every validation item's model inputs (masked frames encoded), stacked: a few MB for val_samples frames."""
    parts = [_conditions(_to_device(_collate(dataset, first, min(first + batch_size, len(dataset))), device),
                         vq_masked, autocast) for first in range(0, len(dataset), batch_size)]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


@torch.no_grad()
def validation_loss(model: DiTHead, scheduler, inputs: dict[str, torch.Tensor], *, batch_size: int, seed: int,
                    autocast, swap: str | None = None) -> float:
    """Mean diffusion loss over the validation ``inputs``, noise and steps fixed by ``seed`` (comparable across steps).

    ``swap``: one of ``SWAPPABLE``; each frame gets that input from the frame half the set away (other speech,
    another reference, another masked frame). The rise of the loss over the true inputs is what that input
    tells the model: near zero for audio means the model does not listen.
    """
    was_training = model.training
    model.eval()
    n = len(inputs["latents"])
    if swap is not None:
        inputs = {**inputs, swap: inputs[swap].roll(n // 2, dims=0)}
    total = 0.0
    for first in range(0, n, batch_size):
        stop = min(first + batch_size, n)
        batch = {name: value[first:stop] for name, value in inputs.items()}
        g = torch.Generator().manual_seed(seed * 1_000_003 + first)
        noise = torch.randn(batch["latents"].shape, generator=g).to(batch["latents"].device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (stop - first,), generator=g)
        with autocast():
            loss = diffusion_loss(model, scheduler, **batch, noise=noise, timesteps=timesteps.to(noise.device))
        total += float(loss) * (stop - first)
    model.train(was_training)
    return total / n


def input_contributions(model: DiTHead, scheduler, inputs: dict[str, torch.Tensor], *, batch_size: int, seed: int,
                        autocast) -> dict[str, float]:
    """``val/loss_ema`` and, per swappable input, ``val/<input>_gain``: the loss with that input swapped minus it."""
    common = dict(batch_size=batch_size, seed=seed, autocast=autocast)
    true_loss = validation_loss(model, scheduler, inputs, **common)
    metrics = {"val/loss_ema": true_loss}
    if len(inputs["latents"]) >= 2:
        for name in SWAPPABLE:
            metrics[f"val/{name}_gain"] = validation_loss(model, scheduler, inputs, swap=name, **common) - true_loss
    return metrics


@torch.no_grad()
def preview_grid(model: DiTHead, train_scheduler, dataset: DiTDataset, vq_masked: VQModel, vq_gt: VQModel, *,
                 count: int, steps: int, seed: int, device: torch.device, autocast) -> np.ndarray:
    """Rows: ground truth | masked input | generated (DDIM, ``steps`` steps), for the first ``count`` items."""
    was_training = model.training
    model.eval()
    batch = _to_device(_collate(dataset, 0, min(count, len(dataset))), device)
    inputs = _conditions(batch, vq_masked, autocast)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(inputs["latents"].shape, generator=g).to(device)
    # The sample stage's DDIM (no clipping of the predicted clean latent: latents are not bounded like pixels).
    z = sample_independent(model, make_scheduler("ddim", train_scheduler.config), inputs["masked"],
                           inputs["reference"], inputs["audio"], steps=steps, noise=noise, autocast=autocast)
    with autocast():
        generated = decode_latents(vq_gt, z).float()
    clips = dataset.clips
    truth = np.stack([clips[int(c)].crop(int(f)) for c, f in zip(batch["clip"], batch["frame"])])
    masked = batch["masked"].permute(0, 2, 3, 1).cpu().numpy()
    rows = [truth, masked, tensor_to_image(generated)]
    model.train(was_training)
    return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)


def train_dit(clips: Sequence[ProcessedClip], config: DiTTrainingConfig, *, features_dir: str | Path,
              vq_masked: VQModel, vq_gt: VQModel, output_dir: str | Path, checkpoint_dir: str | Path,
              live_dir: str | Path, latent_cache_dir: str | Path) -> dict[str, float]:
    """Train the DiT on ``clips`` (audio features in ``features_dir``) and save it to ``output_dir``.

    The VQGANs stay frozen. Ground-truth latents are cached in
    ``latent_cache_dir`` (reused by later runs with the same VQGAN and data).
    Resumes from ``checkpoint_dir`` when it holds a checkpoint of the same run;
    logs to dvclive in ``live_dir``. Returns the final validation losses.
    Raises ``TrainingInterrupted`` after saving a checkpoint when SIGTERM/SIGINT arrives.
    """
    accelerator = make_accelerator(mixed_precision=config.mixed_precision,
                                   gradient_accumulation_steps=config.gradient_accumulation, seed=config.seed)
    device = accelerator.device
    vq_masked = vq_masked.to(device).eval().requires_grad_(False)
    vq_gt = vq_gt.to(device).eval().requires_grad_(False)
    data = _prepare_data(clips, config, Path(features_dir), vq_gt, vq_masked, Path(latent_cache_dir), accelerator)

    scheduler = make_noise_scheduler(config.diffusion_steps)
    model = build_model(config, data.latent_shape, data.audio_dim)
    model.set_audio_statistics(training_audio(data.train))
    ema = EMAModel(model.parameters(), decay=config.ema_decay, foreach=True)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(ema)

    # A run resumes only from checkpoints of the same parameters, data and VQGAN weights.
    fingerprint = {"config": _fingerprint_config(config),
                   "data": {clip.name: [clip.fingerprint(), file_sha256(data.train.features.paths[clip.name])]
                            for clip in clips},
                   "vqgan": [model_fingerprint(vq_masked), model_fingerprint(vq_gt)]}
    run = TrainingRun(accelerator, steps=config.steps,
                      samples_per_step=config.batch_size * config.gradient_accumulation * accelerator.num_processes,
                      desc="dit", checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, live_dir=live_dir,
                      cadence=Cadence(log_every=config.log_every, validate_every=config.val_every,
                                      image_every=config.sample_every, checkpoint_every=config.checkpoint_every))
    ema.to(device)                    # a resumed EMA state is loaded on the CPU
    live = run.live
    batches = iter(make_dataloader(data.train, batch_size=config.batch_size, accelerator=accelerator,
                                   seed=config.seed, start_step=run.start, workers=config.workers))
    plain_model = accelerator.unwrap_model(model)
    evaluation = dict(vq_masked=vq_masked, device=device, autocast=accelerator.autocast)
    val_inputs = validation_inputs(data.validation, vq_masked, batch_size=config.batch_size, device=device,
                                   autocast=accelerator.autocast) \
        if accelerator.is_main_process and data.validation is not None else None
    val_args = dict(batch_size=config.batch_size, seed=config.seed, autocast=accelerator.autocast)

    def validate(step: int, with_images: bool) -> dict[str, float]:
        metrics = {}
        if val_inputs is not None:
            metrics["val/loss"] = validation_loss(plain_model, scheduler, val_inputs, **val_args)
            with ema_weights(ema, plain_model):
                metrics.update(input_contributions(plain_model, scheduler, val_inputs, **val_args))
                if with_images:
                    grid = preview_grid(plain_model, scheduler, data.validation, vq_gt=vq_gt, count=config.sample_count,
                                        steps=config.sample_steps, seed=config.seed, **evaluation)
                    log_image(live, step, "samples.png", grid)
            log_metrics(live, step, metrics)
        accelerator.wait_for_everyone()
        return metrics

    running = [torch.zeros((), device=device), 0]        # loss sum and micro-batches since the last log

    def train_step(step: int) -> None:
        for micro_step in range(config.gradient_accumulation):
            batch = _to_device(next(batches), device)
            inputs = _conditions(batch, vq_masked, accelerator.autocast)
            noise_rng = step_generator(config.seed, step, micro_step, accelerator.process_index, device)
            inputs["audio"] = drop_audio(inputs["audio"], plain_model.audio_mean, config.audio_dropout, noise_rng)
            inputs["audio"] = noisy_audio(inputs["audio"], plain_model.audio_std, config.audio_noise, noise_rng)
            with accelerator.accumulate(model), accelerator.autocast():
                loss = diffusion_loss(model, scheduler, **inputs, generator=noise_rng, snr_gamma=config.snr_gamma,
                                      region_weight=_region_weight(batch, inputs, config))
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running[0] += loss.detach()
            running[1] += 1
        ema.step(plain_model.parameters())

    def train_metrics(step: int, rate: float) -> dict[str, float]:
        mean_loss = float(accelerator.reduce(running[0] / running[1], reduction="mean"))
        running[0].zero_()
        running[1] = 0
        return {"train/loss": mean_loss, "train/samples_per_s": rate}

    run.loop(step=train_step, train_metrics=train_metrics, validate=validate)
    final = validate(config.steps, with_images=True)
    save_dit(accelerator, output_dir, plain_model, ema, scheduler, data.split)
    run.finish()
    return final


def step_generator(seed: int, step: int, micro_step: int, process_index: int, device: torch.device) -> torch.Generator:
    """The noise and diffusion steps of one micro-batch, a pure function of where it is in the run:
    a resumed run draws exactly what an uninterrupted one would have."""
    state = np.random.SeedSequence([seed, step, micro_step, process_index]).generate_state(1, dtype=np.uint64)
    return torch.Generator(device).manual_seed(int(state[0]) >> 1)


@contextlib.contextmanager
def ema_weights(ema: EMAModel, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within ``with``, ``model`` carries the EMA weights; its own come back afterwards."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def save_dit(accelerator, output_dir: str | Path, model: DiTHead, ema: EMAModel, scheduler,
             split: DataSplit) -> None:
    """Write raw weights, ``ema/``, ``scheduler/`` and ``split.json`` to ``output_dir``, all or nothing."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # A fresh model with the EMA weights: its config.json is the DiT's own,
        # without the EMA bookkeeping EMAModel.save_pretrained would add.
        ema_model = DiTHead.from_config(model.config)
        ema_model.load_state_dict(model.state_dict())       # buffers (audio statistics); EMA weights next
        ema.copy_to(ema_model.parameters())
        with atomic_path(output_dir) as tmp:
            model.save_pretrained(tmp)
            ema_model.save_pretrained(tmp / "ema")
            scheduler.save_pretrained(tmp / "scheduler")
            (tmp / SPLIT_FILE).write_text(json.dumps(split.to_json(), indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
