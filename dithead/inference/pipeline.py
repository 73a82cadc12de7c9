"""From a trained model to a finished video: sample, decode, paste back, watermark, encode.

``DiTHeadPipeline`` holds the DiT, its scheduler and the two VQGANs, and has
two entry points:

- ``sample_clip(clip, features, audio_path, out)``: a preprocessed clip
  (``dithead.data.store.ProcessedClip``) driven by per-frame audio features; what
  the ``sample`` stage runs for held-out clips and dubbing pairs;
- ``pipe(video, audio, out)``: any video and audio file; preprocesses the
  video and computes the audio features on the fly, then ``sample_clip``
  (``dithead generate``).

Per output frame k the video frame shown is ``driving_frame_order``'s (the
video is cut when the audio is shorter, played back and forth when longer).
Masked latents are encoded chunk by chunk as the sampler asks for them,
generated crops are decoded, pasted into the full-resolution frame inside the
blurred lower-face mask (frames without a face pass through), watermarked,
and streamed to the H.264 writer with the driving audio: memory does not
grow with the length of the video.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from dithead.data.audio_features import audio_windows
from dithead.data.face import nearest_valid, paste_back
from dithead.data.mask import MaskSettings, apply_mask, lower_face_mask
from dithead.data.store import CropStore, CropStoreWriter, ProcessedClip
from dithead.data.video_reader import iter_frames
from dithead.device import check_precision, default_device
from dithead.inference import watermark as wm
from dithead.inference.sampling import (driving_frame_order, make_scheduler, pick_reference_index, sample_lockstep,
                                       smooth_over_time, with_audio_guidance)
from dithead.inference.video_writer import DEFAULT_CRF, DEFAULT_PRESET, VideoWriter
from dithead.models.latents import decode_latents, encode_latents, tensor_to_image
from dithead.timing import PhaseTimer

MODEL_NAME = "DiT-Head"


class ModelDirectoryError(FileNotFoundError):
    """A trained model is missing; the message names the directory and the stage that makes it."""


@dataclass
class WatermarkSettings:
    """The ``sample.watermark`` params: the provenance mark embedded in every generated frame."""

    message: str = wm.DEFAULT_MESSAGE
    strength: float = wm.DEFAULT_STRENGTH


@dataclass
class SampleSettings:
    """The ``sample:`` params (same names and defaults as params.yaml), plus ``seed`` and ``dit.min_ref_distance``.

    ``solver``, ``precision`` and ``weights`` say how ``DiTHeadPipeline.from_pretrained`` loads the
    models; ``baselines`` and ``dubbing`` which videos the sample stage makes; the rest how each is sampled.
    """

    solver: str = "ddim"
    steps: int = 250
    eta: float = 0.0
    audio_guidance: float = 1.0
    reference: str = "evolving"
    noise: str = "per_frame"
    temporal_smoothing: float = 0.0
    chunk_size: int = 16
    precision: str = "auto"
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    weights: str = "ema"
    baselines: list[str] = field(default_factory=lambda: ["reference_copy"])
    dubbing: list[dict] = field(default_factory=list)
    watermark: WatermarkSettings = field(default_factory=WatermarkSettings)
    seed: int = 0
    min_ref_distance: int = 60


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, else fp32; ``no``: fp32 (the vocabulary of ``dithead.device``)."""
    check_precision(precision, "sample.precision")
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[precision]


class ClipConditions:
    """The sampler's per-frame conditions for one clip, encoded chunk by chunk on request.

    ``mask_cache_size``: lower-face masks kept for reuse. Each output frame's
    mask is needed twice, to encode the masked crop and to paste the
    generated one back, and ping-pong repeats frames just after turning; both
    happen within about two chunks, so ``2 * chunk_size`` masks are enough
    and memory stays bounded.
    """

    def __init__(self, clip: ProcessedClip, order: np.ndarray, features: np.ndarray, vq_masked,
                 mask: MaskSettings, device: torch.device, autocast, audio_window: int = 11,
                 mask_cache_size: int = 32, timer: PhaseTimer | None = None):
        self.clip, self.order, self.features = clip, order, features
        self.timer = timer or PhaseTimer()
        self.vq_masked, self.device, self.autocast = vq_masked, device, autocast
        self.mask_settings, self.audio_window = mask, audio_window
        self.landmark_frame = nearest_valid(np.asarray(clip.valid))
        self._landmark_mask = functools.lru_cache(maxsize=mask_cache_size)(self._compute_mask)

    def __len__(self) -> int:
        return len(self.order)

    def mask(self, video_frame: int) -> np.ndarray:
        """Read-only (H, W) float32 mask of ``video_frame``'s crop (a frame without a face borrows the nearest's)."""
        return self._landmark_mask(int(self.landmark_frame[video_frame]))

    def _compute_mask(self, landmark_frame: int) -> np.ndarray:
        size = int(self.clip.meta["size"])
        landmarks = np.asarray(self.clip.landmarks[landmark_frame])
        settings = self.mask_settings
        mask = lower_face_mask(landmarks, (size, size), settings.kernel_size, settings.sigma, region=settings.region)
        mask.flags.writeable = False        # shared by every caller through the cache
        return mask

    def window(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.order[start:stop]
        with self.timer.phase("masking"):
            masked = np.stack([apply_mask(self.clip.crop(int(v)), self.mask(int(v))) for v in frames])
        images = torch.from_numpy(masked).permute(0, 3, 1, 2).to(self.device)
        with self.timer.phase("masked encode"), self.autocast():
            latents = encode_latents(self.vq_masked, images).float()
        audio = audio_windows(self.features, np.arange(start, stop), self.audio_window)
        return latents, torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)


# Frames watermarked at once in worker threads (numpy and OpenCV release the GIL), while the main thread
# decodes, pastes and hands marked frames to x264 (which has threads of its own).
WATERMARK_THREADS = 2


def in_order(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``fn(item)`` for each item, computed in ``pool`` up to ``ahead`` items in advance, yielded in order."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def source_frames(video: str | os.PathLike, order: np.ndarray, fps: float, work_dir: Path) -> Iterator[np.ndarray]:
    """Full-resolution frames of ``video`` (at ``fps``) in ``order``.

    A forward-only order is streamed; one that goes back (ping-pong) first
    stores the frames losslessly (PNG) in ``work_dir`` for random access, so
    memory stays flat either way.
    """
    first = int(order[0]) if len(order) else 0
    forward_only = np.array_equal(order, np.arange(first, first + len(order)))
    if forward_only:
        for frame in iter_frames(video, fps):
            if frame.index >= first + len(order):
                return
            if frame.index >= first:
                yield frame.image
        return
    needed = int(order.max()) + 1
    with CropStoreWriter(work_dir, codec="png") as writer:
        for frame in iter_frames(video, fps):
            if frame.index >= needed:
                break
            writer.append(frame.image)
    store = CropStore(work_dir)
    for index in order:
        yield store[int(min(index, len(store) - 1))]


class DiTHeadPipeline:
    """DiT + scheduler + VQGAN encoders/decoder, ready to dub videos."""

    def __init__(self, dit, scheduler, vq_masked, vq_gt, *, mask: MaskSettings | None = None, fps: float = 25.0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 audio_features: Callable[[np.ndarray, int], np.ndarray] | None = None,
                 model_name: str = MODEL_NAME):
        self.device = torch.device(device)
        self.dtype = dtype
        self.dit = dit.to(self.device).eval()
        if dtype != torch.float32:
            self.dit = self.dit.to(dtype)
        self.vq_masked = vq_masked.to(self.device).eval()
        self.vq_gt = vq_gt.to(self.device).eval()
        self.scheduler = scheduler
        self.mask = mask or MaskSettings()       # as in training (max_shift: training only)
        self.fps = fps
        self.audio_features = audio_features
        self.model_name = model_name

    @classmethod
    def from_pretrained(cls, models_dir: str | os.PathLike = "models", *, weights: str = "ema", solver: str = "ddim",
                        device: str | torch.device | None = None, precision: str = "auto", **kwargs) -> "DiTHeadPipeline":
        """Load ``<models_dir>/dit`` (``ema/`` or raw weights, ``scheduler/``), ``vqgan_masked`` and ``vqgan_gt``."""
        from diffusers import DDPMScheduler, VQModel

        from dithead.models.dit import DiTHead

        root = Path(models_dir)
        needed = {"dit": "train_dit", "vqgan_masked": "train_vqgan_masked", "vqgan_gt": "train_vqgan_gt"}
        for name, stage in needed.items():
            if not (root / name / "config.json").is_file():
                raise ModelDirectoryError(f"{root / name}: no trained model there (made by `dvc repro {stage}`; "
                                          f"or pass --models DIR with dit/, vqgan_masked/ and vqgan_gt/)")
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', not {weights!r}")
        device = torch.device(device or default_device())
        dit = DiTHead.from_pretrained(root / "dit" / "ema" if weights == "ema" else root / "dit")
        train_config = DDPMScheduler.load_config(root / "dit" / "scheduler") \
            if (root / "dit" / "scheduler").is_dir() else None
        return cls(dit, make_scheduler(solver, train_config), VQModel.from_pretrained(root / "vqgan_masked"),
                   VQModel.from_pretrained(root / "vqgan_gt"), device=device,
                   dtype=resolve_precision(precision, device), **kwargs)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @staticmethod
    def reference_index(clip: ProcessedClip, target: int, settings: SampleSettings,
                        reference_frames: tuple[int, int] | None = None) -> int:
        """The first frame's reference (paper 3.4): a random frame with a face, at least
        ``min_ref_distance`` from ``target``, taken from ``reference_frames`` ([start, stop)) if given."""
        valid = np.array(clip.valid, dtype=bool)
        if reference_frames is not None:
            inside = np.zeros_like(valid)
            inside[reference_frames[0]:reference_frames[1]] = True
            valid &= inside
        rng = np.random.default_rng(settings.seed)
        return pick_reference_index(len(clip), target, rng, settings.min_ref_distance, valid)

    def _reference_latent(self, clip: ProcessedClip, index: int) -> torch.Tensor:
        image = torch.from_numpy(clip.crop(index)).permute(2, 0, 1)[None].to(self.device)
        with self._autocast():
            return encode_latents(self.vq_gt, image).float()

    @torch.no_grad()
    def sample_clip(self, clip: ProcessedClip, features: np.ndarray, audio_path: str | os.PathLike,
                    output: str | os.PathLike, settings: SampleSettings | None = None,
                    video_path: str | os.PathLike | None = None, progress: bool = True,
                    frames: tuple[int, int] | None = None, reference_frames: tuple[int, int] | None = None,
                    timer: PhaseTimer | None = None) -> dict:
        """Dub ``clip`` with ``features`` (one row per output frame) and mux ``audio_path``; returns a report.

        ``frames``: the part [start, stop) of the clip to dub (default: all of it), e.g. the held-out end of
        a time split; ``reference_frames``: where the reference frame may come from (default: anywhere).
        The report's ``phase_seconds`` says where the time went (``timer``: one that already holds earlier
        phases of the same job).
        """
        settings = settings or SampleSettings()
        timer = timer or PhaseTimer()
        order = self._order(clip, len(features), frames)
        conditions = self._conditions(clip, order, features, settings, timer)
        reference_index = self.reference_index(clip, int(order[0]), settings, reference_frames)
        reference = self._reference_latent(clip, reference_index)
        start = time.perf_counter()
        model = with_audio_guidance(self.dit, settings.audio_guidance)
        chunks = sample_lockstep(model, self.scheduler, conditions, reference, steps=settings.steps,
                                 seed=settings.seed, chunk_size=settings.chunk_size, eta=settings.eta,
                                 reference_mode=settings.reference, noise=settings.noise,
                                 device=self.device, progress=progress, desc=f"sampling {clip.name}")
        chunks = smooth_over_time(chunks, settings.temporal_smoothing)
        crops = self._decoded_crops(timer.iterate("model", chunks), timer)
        written = self._write_video(clip, order, crops, conditions.mask, audio_path, output, settings, video_path,
                                    timer)
        seconds = time.perf_counter() - start
        return {"clip": clip.name, "output": str(output), "frames": written, "video_frames": len(clip),
                "start_frame": int(order[0]), "ping_pong": bool(order.max() - order.min() + 1 < len(order)),
                "reference_frame": reference_index, "steps": settings.steps,
                "audio_guidance": settings.audio_guidance, "reference": settings.reference, "noise": settings.noise,
                "temporal_smoothing": settings.temporal_smoothing, "seconds": round(seconds, 2),
                "frames_per_second": round(written / seconds, 3), "watermark": settings.watermark.message,
                **timer.report(written)}

    def paste_reference(self, clip: ProcessedClip, n_frames: int, audio_path: str | os.PathLike,
                        output: str | os.PathLike, settings: SampleSettings | None = None,
                        video_path: str | os.PathLike | None = None, frames: tuple[int, int] | None = None,
                        reference_frames: tuple[int, int] | None = None) -> dict:
        """The reference-copy baseline: the reference frame's own crop pasted with the same mask into every
        frame, as ``sample_clip`` would paste generated ones (no audio, no motion: the floor a model must beat)."""
        settings = settings or SampleSettings()
        order = self._order(clip, n_frames, frames)
        reference_index = self.reference_index(clip, int(order[0]), settings, reference_frames)
        crop = clip.crop(reference_index)
        report = self.paste_crops(clip, (crop for _ in order), n_frames, audio_path, output, settings, video_path,
                                  frames)
        return {**report, "reference_frame": reference_index}

    def paste_crops(self, clip: ProcessedClip, crops: Iterable[np.ndarray], n_frames: int,
                    audio_path: str | os.PathLike, output: str | os.PathLike, settings: SampleSettings | None = None,
                    video_path: str | os.PathLike | None = None, frames: tuple[int, int] | None = None) -> dict:
        """``crops`` (one face crop per output frame) pasted with the mask ``sample_clip`` uses, no model involved:
        baselines, and ceilings such as the ground truth's own crops (``bench/sync_ceiling.py``)."""
        settings = settings or SampleSettings()
        order = self._order(clip, n_frames, frames)
        masks = self._conditions(clip, order, np.zeros((n_frames, 1), np.float32), settings).mask
        written = self._write_video(clip, order, iter(crops), masks, audio_path, output, settings, video_path)
        return {"clip": clip.name, "output": str(output), "frames": written, "video_frames": len(clip),
                "start_frame": int(order[0]), "steps": 0}

    @staticmethod
    def _order(clip: ProcessedClip, n_frames: int, frames: tuple[int, int] | None) -> np.ndarray:
        start, stop = frames if frames is not None else (0, len(clip))
        if not 0 <= start < stop <= len(clip):
            raise ValueError(f"clip '{clip.name}' has {len(clip)} frames; cannot dub frames [{start}, {stop})")
        return start + driving_frame_order(stop - start, n_frames)

    def _conditions(self, clip: ProcessedClip, order: np.ndarray, features: np.ndarray,
                    settings: SampleSettings, timer: PhaseTimer | None = None) -> ClipConditions:
        return ClipConditions(clip, order, features, self.vq_masked, self.mask, self.device, self._autocast,
                              getattr(self.dit.config, "audio_window", 11), mask_cache_size=2 * settings.chunk_size,
                              timer=timer)

    def _decoded_crops(self, chunks: Iterator[torch.Tensor], timer: PhaseTimer) -> Iterator[np.ndarray]:
        for latents in chunks:
            with timer.phase("latent decode"), self._autocast():
                images = tensor_to_image(decode_latents(self.vq_gt, latents).float())
            yield from images

    def _write_video(self, clip: ProcessedClip, order: np.ndarray, crops: Iterator[np.ndarray],
                     mask: Callable[[int], np.ndarray], audio_path, output, settings: SampleSettings,
                     video_path=None, timer: PhaseTimer | None = None) -> int:
        """Paste one crop per output frame into the source frames of ``order``, watermark, encode; returns frames.

        ``timer`` gets the phases decode, paste-back, watermark and encode (which includes muxing the audio).
        """
        timer = timer or PhaseTimer()
        video_path = Path(video_path or clip.meta["source"]["video"])
        mark = wm.marker(settings.watermark.message, settings.watermark.strength)
        with timer.phase("encode"), tempfile.TemporaryDirectory() as work, \
                VideoWriter(output, self.fps, crf=settings.crf, preset=settings.preset, audio=audio_path,
                            metadata=wm.provenance_tags(self.model_name, settings.watermark.message)) as writer, \
                ThreadPoolExecutor(WATERMARK_THREADS) as pool:
            frames = timer.iterate("decode", source_frames(video_path, order, self.fps, Path(work)))
            pasted = (self._pasted(clip, int(v), crop, frame, mask, timer) for v, crop, frame in zip(order, crops, frames))
            written = 0
            for frame in timer.iterate("watermark", in_order(pool, mark, pasted, ahead=2 * WATERMARK_THREADS)):
                writer.write(frame)
                written += 1
        return written

    @staticmethod
    def _pasted(clip: ProcessedClip, v: int, crop: np.ndarray, frame: np.ndarray, mask: Callable[[int], np.ndarray],
                timer: PhaseTimer) -> np.ndarray:
        """``frame`` with ``crop`` pasted in its face box and mask; a frame without a face as it is."""
        if not clip.valid[v]:
            return frame
        with timer.phase("paste-back"):
            return paste_back(frame, crop, np.asarray(clip.boxes[v]), mask(v))

    def __call__(self, video: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike,
                 settings: SampleSettings | None = None, preprocess_config=None, progress: bool = True) -> dict:
        """Dub any ``video`` with any ``audio`` file: preprocess, features, ``sample_clip``."""
        from dithead.data.audio import align_to_frames, load_audio
        from dithead.data.preprocess import PreprocessConfig, process_clip

        if self.audio_features is None:
            raise ValueError("this pipeline has no audio feature extractor: pass audio_features= "
                             "(see dithead.data.audio_features.audio_feature_extractor)")
        cfg = preprocess_config or PreprocessConfig(fps=self.fps, size=int(self.vq_gt.config.sample_size))
        timer = PhaseTimer()
        with timer.phase("audio features"):
            sound = load_audio(audio, cfg.sample_rate)          # AudioError names the file when unreadable
            n_frames = int(np.floor(sound.duration * self.fps + 0.5))     # the driving audio sets the length
            samples, _ = align_to_frames(sound.samples, n_frames, self.fps, cfg.sample_rate)
            features = self.audio_features(samples, n_frames)
        with tempfile.TemporaryDirectory() as work:
            # ClipSkipped (no face) and VideoError (unreadable) come out of here with the file named.
            with timer.phase("preprocess"):
                result = process_clip(video, work, cfg, audio=audio, name="input", progress=progress)
            return self.sample_clip(ProcessedClip(Path(work) / result.name), features, audio, output, settings,
                                    video_path=video, progress=progress, timer=timer)

