"""Evolving inference (paper 3.4): every frame of a clip denoised from noise.

Each frame i is conditioned on its masked latent, its audio window and a
reference latent. Frame 0 takes the clean latent of a random frame of the
clip at least 60 frames away (as in training); every later frame takes, at
step t, the *noisy* latent of frame i-1 at that same step t. That is the
only link between frames, and it runs forward in frame order only within
one step, so all frames of a chunk can go through step t together as one
batch (``sample_lockstep``): the reference batch is the latent batch shifted
by one frame, with the last frame of the previous chunk (its latent at every
step, kept from the chunk before) in front. ``sample_frame_by_frame`` is the
literal one-frame-at-a-time order, kept as the reference implementation; both
give the same frames to float precision. ``sample_independent`` denoises
frames that each have their own clean reference (no link between them): the
DiT's training previews, with the same schedulers and solver steps.

Noise is drawn per frame from a generator seeded by (seed, frame index) and
consumed in the same order in both implementations (initial latent, then one
draw per step when the solver is stochastic), so a frame's noise never
depends on chunking or batch size.

Two choices beyond the paper, both params of the sample stage:
``reference="fixed"`` gives every frame the first frame's clean reference
(the condition the DiT is trained on: a clean frame of the same person)
instead of the previous frame's noisy latent, and ``noise="shared"`` starts
every frame from the same noise. With both, frames differ only where their
conditions (masked frame, audio) do: no frame-to-frame jitter from the noise.

``smooth_over_time`` filters the sampled latents along time with a Gaussian
(``sample.temporal_smoothing``, sigma in frames): frames sampled from their own
noise each draw their own mouth for the same audio, and the filter averages
that frame-to-frame scatter (it lifts held-out sync only for models whose
samples scatter much: README). It streams over the chunks, holding only the
few frames the filter reaches, so memory stays flat as clips grow.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Protocol

import numpy as np
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from tqdm.auto import tqdm

SOLVERS = ("ddim", "dpmsolver++")
REFERENCES = ("evolving", "fixed")   # frame i's reference: frame i-1's noisy latent (paper 3.4), or frame 0's clean one
NOISES = ("per_frame", "shared")     # each frame its own noise (the paper), or the same noise for all
REFERENCE_MIN_DISTANCE = 60    # paper 3.3: the reference frame is at least 60 frames away


class FrameConditions(Protocol):
    """Per-frame conditions of one clip, read a chunk at a time so long clips stay cheap."""

    def __len__(self) -> int: ...

    def window(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked latents (n, Cm, h, w) and audio windows (n, 11, D) of frames start..stop-1."""


@dataclass
class TensorConditions:
    """Conditions already in memory: masked latents (N, Cm, h, w), audio windows (N, 11, D)."""

    masked: torch.Tensor
    audio: torch.Tensor

    def __post_init__(self):
        if len(self.masked) != len(self.audio):
            raise ValueError(f"{len(self.masked)} masked latents but {len(self.audio)} audio windows: one of each per frame")

    def __len__(self) -> int:
        return len(self.masked)

    def window(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.masked[start:stop], self.audio[start:stop]


# --- schedulers ----------------------------------------------------------------

def make_scheduler(solver: str = "ddim", train_config: dict | None = None):
    """A diffusers inference scheduler for the diffusion the DiT was trained with.

    ``train_config``: the training scheduler's config (e.g. a DDPMScheduler's
    ``config``); without it, ADM's (1000 steps, linear betas 1e-4..0.02).
    Latents are not bounded like pixels, so no clipping of the predicted x0.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = dict(train_config) if train_config else {
        "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    config["prediction_type"] = "epsilon"
    if solver == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True)
    if solver == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")


def _fresh_scheduler(template, steps: int):
    """A scheduler with its own state (multistep solvers keep a history per trajectory)."""
    scheduler = type(template).from_config(template.config)
    scheduler.set_timesteps(steps)
    return scheduler


def _is_stochastic(scheduler, eta: float) -> bool:
    return scheduler.__class__.__name__ == "DDIMScheduler" and eta > 0


# --- per-frame noise -------------------------------------------------------------

def frame_generator(seed: int, frame: int) -> torch.Generator:
    """A CPU generator for one frame; SeedSequence decorrelates neighbouring frames and seeds."""
    state = np.random.SeedSequence([int(seed), int(frame)]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def frame_generators(seed: int, frames: range, noise: str = "per_frame") -> list[torch.Generator]:
    """One generator per frame of ``frames``: seeded by its index, or all by frame 0's with ``noise="shared"``."""
    if noise not in NOISES:
        raise ValueError(f"sample.noise must be one of {', '.join(NOISES)}, not {noise!r}")
    return [frame_generator(seed, 0 if noise == "shared" else i) for i in frames]


def _check_reference_mode(reference: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"sample.reference must be one of {', '.join(REFERENCES)}, not {reference!r}")


def _frame_noise(generators: list[torch.Generator], shape: tuple[int, ...], device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One standard-normal latent per generator, stacked: (len(generators), *shape).

    Always drawn in float32 (the same numbers whatever ``dtype``), then cast."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, dtype)


# --- audio guidance ----------------------------------------------------------------

class AudioGuidance(torch.nn.Module):
    """The DiT with its audio effect scaled: ``eps = eps(mean audio) + scale * (eps(audio) - eps(mean audio))``.

    Classifier-free guidance (Ho & Salimans, 2022) with the audio as the
    condition. The paper samples without guidance; a small model trained on a
    minute of footage follows the audio too weakly (the mouth moves a third as
    much as the real one), and guidance amplifies what the audio changes.
    The "unconditional" input is the mean audio window of the training clips
    (the DiT's ``audio_mean``: zero after its standardisation), an input near
    what the model sees throughout training, so guidance works on any trained
    DiT; ``dit.audio_dropout`` also trains the model on that window itself.
    Both predictions run as one batch of twice the size.
    """

    def __init__(self, model: torch.nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, sample, masked, reference, audio, timestep):
        mean_audio = self.model.audio_mean.to(audio).expand_as(audio)
        both = self.model(sample=torch.cat([sample, sample]), masked=torch.cat([masked, masked]),
                          reference=torch.cat([reference, reference]), audio=torch.cat([audio, mean_audio]),
                          timestep=torch.cat([timestep, timestep])).sample
        with_audio, without = both.chunk(2)
        return Transformer2DModelOutput(sample=without + self.scale * (with_audio - without))


def with_audio_guidance(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """``model`` itself at ``scale`` 1 (no guidance, no extra cost), else ``AudioGuidance(model, scale)``."""
    if not scale >= 0:
        raise ValueError(f"sample.audio_guidance must be >= 0 (1: no guidance), not {scale}")
    return model if scale == 1 else AudioGuidance(model, scale)


# --- sampling --------------------------------------------------------------------

def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _latent_dtype(model: torch.nn.Module) -> torch.dtype:
    """Latents and solver state stay in float32 for fp32/bf16/fp16 models, float64 for a float64 model
    (exact comparisons of sampling orders, free of float32 rounding)."""
    return torch.float64 if _model_dtype(model) == torch.float64 else torch.float32


def _predict_noise(model, z, masked, reference, audio, t, dtype) -> torch.Tensor:
    timestep = torch.full((len(z),), int(t), device=z.device, dtype=torch.long)
    out = model(sample=z.to(dtype), masked=masked.to(dtype), reference=reference.to(dtype),
                audio=audio.to(dtype), timestep=timestep).sample
    return out.to(z.dtype)


def _reference_latent(reference: torch.Tensor) -> torch.Tensor:
    return reference if reference.dim() == 4 else reference.unsqueeze(0)


@torch.no_grad()
def sample_frame_by_frame(model, scheduler, conditions: FrameConditions, reference: torch.Tensor, *,
                          steps: int, seed: int, eta: float = 0.0, device=None, reference_mode: str = "evolving",
                          noise: str = "per_frame", progress: bool = True,
                          desc: str = "sampling") -> Iterator[torch.Tensor]:
    """Denoise one frame after the other (the literal order of paper 3.4); yields (1, C, h, w) per frame.

    Keeps the previous frame's latent at every step (``steps`` latents) to serve as the reference
    (``reference_mode="fixed"``: every frame takes ``reference``; ``noise``: see ``frame_generators``).
    """
    _check_reference_mode(reference_mode)
    device = torch.device(device) if device is not None else reference.device
    dtype = _model_dtype(model)
    clean_reference = _reference_latent(reference).to(device, _latent_dtype(model))
    previous: list[torch.Tensor] | None = None     # frame i-1's latent at each step
    with tqdm(total=len(conditions), unit="frame", desc=desc, disable=not progress) as bar:
        for i in range(len(conditions)):
            masked, audio = (x.to(device) for x in conditions.window(i, i + 1))
            sched = _fresh_scheduler(scheduler, steps)
            generators = frame_generators(seed, range(i, i + 1), noise)
            z = _frame_noise(generators, clean_reference.shape[1:], device, clean_reference.dtype) * sched.init_noise_sigma
            trajectory = []
            for k, t in enumerate(sched.timesteps):
                trajectory.append(z)
                ref = clean_reference if previous is None or reference_mode == "fixed" else previous[k]
                eps = _predict_noise(model, sched.scale_model_input(z, t), masked, ref, audio, t, dtype)
                z = _step(sched, eps, t, z, generators, eta, device)
            previous = trajectory
            bar.update(1)
            yield z


@torch.no_grad()
def sample_lockstep(model, scheduler, conditions: FrameConditions, reference: torch.Tensor, *,
                    steps: int, seed: int, chunk_size: int = 16, eta: float = 0.0, device=None,
                    reference_mode: str = "evolving", noise: str = "per_frame",
                    progress: bool = True, desc: str = "sampling") -> Iterator[torch.Tensor]:
    """Denoise ``chunk_size`` frames at a time, all through each step together; yields (n, C, h, w) per chunk.

    Same result as ``sample_frame_by_frame`` (with the same ``reference_mode`` and ``noise``). The last
    frame of each chunk hands its latent at every step to the first frame of the next chunk.
    Memory grows with ``chunk_size`` and ``steps``, not with clip length.
    """
    _check_reference_mode(reference_mode)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = torch.device(device) if device is not None else reference.device
    dtype = _model_dtype(model)
    clean_reference = _reference_latent(reference).to(device, _latent_dtype(model))
    carried: list[torch.Tensor] | None = None      # last frame of the previous chunk, at each step
    n_frames = len(conditions)
    with tqdm(total=n_frames, unit="frame", desc=desc, disable=not progress) as bar:
        for start in range(0, n_frames, chunk_size):
            stop = min(start + chunk_size, n_frames)
            masked, audio = (x.to(device) for x in conditions.window(start, stop))
            sched = _fresh_scheduler(scheduler, steps)
            generators = frame_generators(seed, range(start, stop), noise)
            z = _frame_noise(generators, clean_reference.shape[1:], device, clean_reference.dtype) * sched.init_noise_sigma
            last_frame_trajectory = []
            for k, t in enumerate(sched.timesteps):
                if reference_mode == "evolving":                # only the evolving reference hands it on
                    last_frame_trajectory.append(z[-1:])
                if reference_mode == "fixed":
                    refs = clean_reference.expand_as(z)
                else:                                          # frame i sees frame i-1 at this same step
                    refs = torch.cat([clean_reference if carried is None else carried[k], z[:-1]])
                eps = _predict_noise(model, sched.scale_model_input(z, t), masked, refs, audio, t, dtype)
                z = _step(sched, eps, t, z, generators, eta, device)
            carried = last_frame_trajectory
            bar.update(stop - start)
            yield z


@torch.no_grad()
def sample_independent(model, scheduler, masked: torch.Tensor, reference: torch.Tensor, audio: torch.Tensor, *,
                       steps: int, noise: torch.Tensor,
                       autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Denoise a batch of unrelated frames, each with its own clean ``reference`` latent; returns (n, C, h, w).

    ``noise``: the initial latents (n, C, h, w) before scaling; ``autocast``: the
    mixed-precision context the model runs in (training's ``accelerator.autocast``).
    Deterministic solvers only (DDIM with eta 0, DPM-Solver++).
    """
    sched = _fresh_scheduler(scheduler, steps)
    z = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        with autocast():
            eps = model(sample=sched.scale_model_input(z, t), masked=masked, reference=reference, audio=audio,
                        timestep=torch.full((len(z),), int(t), device=z.device, dtype=torch.long)).sample
        z = _step(sched, eps.to(z.dtype), t, z, [], 0.0, z.device)
    return z


def _step(sched, eps, t, z, generators, eta, device) -> torch.Tensor:
    if _is_stochastic(sched, eta):
        noise = _frame_noise(generators, z.shape[1:], device, z.dtype)
        return sched.step(eps, t, z, eta=eta, variance_noise=noise).prev_sample
    if sched.__class__.__name__ == "DDIMScheduler":
        return sched.step(eps, t, z, eta=0.0).prev_sample
    return sched.step(eps, t, z).prev_sample


def temporal_kernel(sigma: float) -> torch.Tensor:
    """Normalised Gaussian weights over frames -r..r, r = round(3 sigma) (scipy's gaussian_filter1d, truncate=3)."""
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).float()


def smooth_over_time(chunks: Iterator[torch.Tensor], sigma: float) -> Iterator[torch.Tensor]:
    """``chunks`` of consecutive frames' latents (n, C, h, w), filtered along time by a Gaussian of ``sigma`` frames.

    Yields the same frames in the same order (in chunks of other sizes: each frame as soon as the frames
    after it that the filter reaches have arrived); the first and last frame stand in for frames beyond
    the ends. ``sigma == 0`` passes the chunks through unchanged.
    """
    if sigma < 0:
        raise ValueError(f"sample.temporal_smoothing must be >= 0 (a Gaussian's sigma in frames), got {sigma}")
    if sigma == 0:
        yield from chunks
        return
    weights = temporal_kernel(sigma)
    radius = len(weights) // 2
    held: torch.Tensor | None = None     # the frames still to yield, after `radius` frames of context before them
    for chunk in chunks:
        before = chunk[:1].expand(radius, *chunk.shape[1:]) if held is None else held
        held = torch.cat([before, chunk])
        held = yield from _yield_filtered(held, weights)
    if held is not None:
        yield from _yield_filtered(torch.cat([held, held[-1:].expand(radius, *held.shape[1:])]), weights)


def _yield_filtered(held: torch.Tensor, weights: torch.Tensor):
    """Yield the filtered frames of ``held`` whose whole window is there; return what the next ones still need."""
    ready = len(held) - len(weights) + 1
    if ready <= 0:
        return held
    w = weights.to(held.device, held.dtype)
    yield sum(w[k] * held[k:k + ready] for k in range(len(w)))
    return held[ready:]


# --- which frames to use -----------------------------------------------------------

def pick_reference_index(n_frames: int, target: int, rng: np.random.Generator,
                         min_distance: int = REFERENCE_MIN_DISTANCE, valid: np.ndarray | None = None) -> int:
    """A random frame at least ``min_distance`` frames from ``target`` (and with a face, if ``valid`` given).

    Clips too short for that distance use the farthest usable frame.
    """
    candidates = np.arange(n_frames)
    if valid is not None and valid.any():
        candidates = candidates[np.asarray(valid, dtype=bool)]
    far = candidates[np.abs(candidates - target) >= min_distance]
    if len(far):
        return int(rng.choice(far))
    return int(candidates[np.argmax(np.abs(candidates - target))])


def driving_frame_order(n_video_frames: int, n_audio_frames: int) -> np.ndarray:
    """Which video frame to show at each audio frame when dubbing.

    Audio longer than the video: the video plays forward, then backward, then
    forward again (ping-pong: 0..n-1, n-2..1, 0..), so there is never a jump
    cut. Audio shorter: the video is cut at the audio's end.
    """
    if n_video_frames < 1 or n_audio_frames < 0:
        raise ValueError(f"need at least one video frame (got {n_video_frames}) and a non-negative audio length")
    if n_video_frames == 1:
        return np.zeros(n_audio_frames, dtype=np.int64)
    period = 2 * (n_video_frames - 1)
    phase = np.arange(n_audio_frames) % period
    return np.where(phase < n_video_frames, phase, period - phase).astype(np.int64)
