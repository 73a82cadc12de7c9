"""Training data of the DiT (paper 3.3): which clips, which frames, which latents.

A training item is one frame k of a clip:

* its ground-truth latent (the diffusion target),
* a reference latent: another frame of the same clip with a face, at least
  ``min_ref_distance`` frames away (``dithead.inference.sampling.pick_reference_index``,
  the rule inference picks the first frame's reference by),
* the frame with its lower face masked, the mask moved by a random shift
  (paper 3.6), as pixels: the masked VQGAN encodes it on the GPU, since a
  new shift every time means a new latent every time (the paper's 4 px shift:
  81 of them); with a small shift, ``precompute_latents(..., mask=...)`` can
  encode every shift once instead, and the item also carries its latent,
* the audio window of frame k (``dithead.data.audio_features.audio_windows``).

Ground-truth and reference latents never change, so they are encoded once by
``precompute_latents`` into a cache of memory-mapped arrays and read from
there; ``bench/dit.py`` measures what that saves. Two augmentations touch
them, a left-right mirror of the whole item (``mirror_probability``) and a
move by whole latent pixels (``max_translation``): each mirrored or moved view
of the faces has a cache of its own latents.

Clips are split by identity (``dithead.training.split``): every clip of a validation
identity is left out of training. The identity is meta.json's ``identity``
when present, else the clip name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dithead.data.audio_features import audio_windows
from dithead.data.mask import MaskSettings, apply_mask, lower_face_mask, mouth_box_mask, random_shift
from dithead.data.store import ProcessedClip
from dithead.fileio import atomic_path
from dithead.inference.sampling import pick_reference_index
from dithead.models.latents import encode_latents, model_fingerprint
from dithead.models.vqgan import downsample_factor
from dithead.training.split import valid_frames

LATENT_DTYPE = np.float16   # half the disk and page cache of float32; far below the diffusion noise


# --------------------------------------------------------------------------- arrays on disk


class LazyArrays:
    """Per-clip ``.npy`` arrays, memory-mapped on first use in each process (picklable)."""

    def __init__(self, paths: Mapping[str, str | os.PathLike]):
        self.paths = {name: Path(path) for name, path in paths.items()}
        self._open: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._open:
            self._open[name] = np.load(self.paths[name], mmap_mode="r")
        return self._open[name]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}


def audio_feature_paths(clips: Sequence[ProcessedClip], features_dir: str | os.PathLike) -> tuple[dict[str, Path], int]:
    """``{clip: data/features/<clip>.npy}`` and the feature size D; checks one row per video frame."""
    paths, dims = {}, {}
    for clip in clips:
        path = Path(features_dir) / f"{clip.name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no audio features for clip '{clip.name}' (run extract_audio_features)")
        features = np.load(path, mmap_mode="r")
        if features.ndim != 2 or len(features) != len(clip):
            raise ValueError(f"{path}: audio features are {features.shape}, expected ({len(clip)}, D): "
                             f"one row per frame of clip '{clip.name}'")
        paths[clip.name], dims[clip.name] = path, features.shape[1]
    if len(set(dims.values())) > 1:
        raise ValueError(f"audio feature sizes differ between clips: {dims}; extract them with one encoder")
    if not dims:
        raise ValueError("no clips")
    return paths, next(iter(dims.values()))


# --------------------------------------------------------------------------- latents


    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mirrored_name(clip_name: str) -> str:
    """The key of a clip's left-right mirrored latents in ``precompute_latents``' result."""
    return view_name(clip_name, mirror=True)


def view_name(clip_name: str, mirror: bool = False, dy: int = 0, dx: int = 0) -> str:
    """The key of a clip's latents in ``precompute_latents``' result: its faces as they are, or mirrored
    left-right and then moved ``dy``, ``dx`` latent pixels (down, right)."""
    return clip_name + _view_suffix(mirror, dy, dx)


def masked_view_name(clip_name: str, shift: tuple[int, int], mirror: bool = False, dy: int = 0, dx: int = 0) -> str:
    """The key of a clip's masked-frame latents in ``precompute_latents(..., mask=...)``' result: the lower
    face masked with the mask moved by ``shift`` (``lower_face_mask``'s), then the view of ``view_name``."""
    return view_name(clip_name, mirror, dy, dx) + _mask_suffix(shift)


def _view_suffix(mirror: bool, dy: int, dx: int) -> str:
    return (":mirrored" if mirror else "") + (f":moved{dy:+d}{dx:+d}" if (dy, dx) != (0, 0) else "")


def _mask_suffix(shift: tuple[int, int] | None) -> str:
    return "" if shift is None else f":mask{shift[0]:+d}{shift[1]:+d}"


def precompute_latents(vq, clips: Sequence[ProcessedClip], cache_dir: str | os.PathLike, *, batch_size: int = 32,
                       accelerator=None, mirrored: bool = False, max_translation: int = 0,
                       mask: MaskSettings | None = None) -> dict[str, Path]:
    """Encode every frame with a face once; returns ``{clip: cache_dir/<clip>.npy}``.

    Each file is (N, C, h, w) float16, row k = frame k (zeros where no face).
    With ``mirrored`` and ``max_translation``, every frame is also encoded
    flipped left-right and moved by up to ``max_translation`` latent pixels
    (the encoder's stride in pixels, edges repeated) each way, under the keys
    ``view_name(clip, mirror, dy, dx)``, in a subfolder per view: the encoder,
    with its attention and group norms, is neither mirror-symmetric nor
    shift-equivariant, so a flipped or moved latent is not the latent of the
    flipped or moved face. A clip whose cache was made by the same weights
    from the same crops is not encoded again. With an
    ``accelerate.Accelerator``, processes share the work and encode under its
    mixed precision.

    With ``mask``, it encodes the masked frames instead (the masked VQGAN's
    inputs): the lower face masked as ``DiTDataset`` masks it, once per mask
    shift in [-max_shift, max_shift] each way, under the keys
    ``masked_view_name(clip, shift, mirror, dy, dx)``: (2 max_shift + 1)^2
    times the views above.
    """
    cache_dir = Path(cache_dir)
    model_key = model_fingerprint(vq)
    stride = downsample_factor(vq)
    offsets = range(-max_translation, max_translation + 1)
    views = [(mirror, dy, dx) for mirror in ((False, True) if mirrored else (False,)) for dy in offsets for dx in offsets]
    shifts = [None] if mask is None else \
        [(a, b) for a in range(-mask.max_shift, mask.max_shift + 1) for b in range(-mask.max_shift, mask.max_shift + 1)]
    paths = {}
    is_main = accelerator is None or accelerator.is_main_process
    todo = [(clip, view, shift) for clip in clips for view in views for shift in shifts]
    desc = "ground-truth latents" if mask is None else "masked latents"
    for clip, (mirror, dy, dx), shift in tqdm(todo, desc=desc, unit="view", disable=not is_main):
        suffix = _view_suffix(mirror, dy, dx) + _mask_suffix(shift)
        masking = None if shift is None else (mask, shift)
        paths[clip.name + suffix] = _cache_clip_latents(
            vq, clip, cache_dir / suffix.replace(":", "/").strip("/"), model_key, batch_size, accelerator,
            mirror=mirror, move=(stride * dy, stride * dx), masking=masking)
    return paths


def _cache_clip_latents(vq, clip: ProcessedClip, cache_dir: Path, model_key: str, batch_size: int, accelerator,
                        mirror: bool = False, move: tuple[int, int] = (0, 0),
                        masking: tuple[MaskSettings, tuple[int, int]] | None = None) -> Path:
    """``cache_dir/<clip>.npy``, encoded unless its key file says it is up to date."""
    path, key_path = cache_dir / f"{clip.name}.npy", cache_dir / f"{clip.name}.json"
    key = {"model": model_key, "clip": clip.fingerprint()}
    if masking is not None:
        # What draws this view's mask: not max_shift, which only says how many views there are.
        settings = {k: v for k, v in dataclasses.asdict(masking[0]).items() if k != "max_shift"}
        key["mask"] = {**settings, "shift": list(masking[1])}
    if path.is_file() and key_path.is_file() and json.loads(key_path.read_text(encoding="utf-8")) == key:
        return path
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = next(vq.parameters()).device
    frames = np.flatnonzero(np.asarray(clip.valid))
    if len(frames) == 0:
        raise ValueError(f"clip '{clip.name}' has no frame with a face")

    def images(rows: np.ndarray) -> torch.Tensor:
        crops = clip.crops(rows)
        if masking is not None:
            crops = np.stack([apply_mask(crop, _lower_face_mask(clip, row, crop.shape[:2], *masking))
                              for crop, row in zip(crops, rows)])
        crops = crops[:, :, ::-1] if mirror else crops
        return torch.from_numpy(translate(crops, *move, axes=(1, 2))).permute(0, 3, 1, 2).to(device)

    probe = encode_latents(vq, images(frames[:1]))
    tmp = cache_dir / f".{clip.name}.npy.tmp"
    if rank == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(tmp, mode="w+", dtype=LATENT_DTYPE, shape=(len(clip), *probe.shape[1:])).flush()
    _barrier(accelerator)
    out = np.load(tmp, mmap_mode="r+")
    for start in range(rank * batch_size, len(frames), world * batch_size):
        rows = frames[start:start + batch_size]
        with accelerator.autocast() if accelerator else contextlib.nullcontext():
            out[rows] = encode_latents(vq, images(rows)).float().cpu().numpy().astype(LATENT_DTYPE)
    out.flush()
    del out
    _barrier(accelerator)
    if rank == 0:
        os.replace(tmp, path)
        with atomic_path(key_path) as key_tmp:
            key_tmp.write_text(json.dumps(key), encoding="utf-8")
    _barrier(accelerator)
    return path


def _lower_face_mask(clip: ProcessedClip, frame: int, size: tuple[int, int], mask: MaskSettings,
                     shift: tuple[int, int]) -> np.ndarray:
    """Frame ``frame``'s training mask, moved by ``shift``: the one place the DiT's data draws it."""
    return lower_face_mask(np.asarray(clip.landmarks[frame]), size, mask.kernel_size, mask.sigma, shift=shift,
                           region=mask.region)


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- dataset


class DiTDataset(Dataset):
    """Training or validation items of the DiT (see the module docstring).

    ``frames``: (M, 2) rows (clip index, frame index) of target frames with a
    face. Index ``i`` may exceed the length (``dithead.training.run.StepSampler``):
    it reads row ``i % M`` and draws the reference frame, the mask shift and
    whether to mirror the item (target, reference and masked frame together,
    with probability ``mirror_probability``; the audio stays) and how far to
    move it (``max_translation`` latent pixels at most, each way) from
    ``(seed, i)``, so an item is the same in every run and worker, and differs
    between epochs. Items are dicts of tensors:
    ``latent``, ``reference`` (C, h, w) float32; ``masked`` (3, H, W) uint8;
    ``mask`` (1, H, W) float32, 1 where hidden; ``mouth`` (1, H, W) float32, 1 in the box around the
    target's lips (``dithead.data.mask.mouth_box_mask``); ``audio`` (audio_window, D) float32; ``clip``, ``frame``, ``reference_frame`` int;
    with ``masked_latents`` (from ``precompute_latents(..., mask=...)``), also ``masked_latent`` (C, h, w)
    float32: the latent of ``masked``, read from that cache.
    """

    def __init__(self, clips: Sequence[ProcessedClip], frames: np.ndarray, latents: LazyArrays,
                 features: LazyArrays, *, mask: MaskSettings, min_ref_distance: int = 60,
                 audio_window: int = 11, mirror_probability: float = 0.0, max_translation: int = 0,
                 seed: int = 0, masked_latents: LazyArrays | None = None):
        self.clips = list(clips)
        self.frames = np.asarray(frames, dtype=np.int64).reshape(-1, 2)
        if len(self.frames) == 0:
            raise ValueError("DiTDataset: no frames to read")
        self.latents = latents
        self.features = features
        self.mask = mask
        self.min_ref_distance = min_ref_distance
        self.audio_window = audio_window
        self.mirror_probability = mirror_probability
        self.max_translation = max_translation
        self.seed = seed
        self.masked_latents = masked_latents

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip_index, frame = (int(v) for v in self.frames[index % len(self.frames)])
        clip = self.clips[clip_index]
        rng = np.random.default_rng([self.seed, index])
        reference = pick_reference_index(len(clip), frame, rng, self.min_ref_distance, np.asarray(clip.valid))
        shift = random_shift(rng, self.mask.max_shift) if self.mask.max_shift > 0 else (0, 0)
        image = clip.crop(frame)
        mask = _lower_face_mask(clip, frame, image.shape[:2], self.mask, shift)
        mouth = mouth_box_mask(np.asarray(clip.landmarks[frame]), image.shape[:2])
        # Drawn last and only when asked, so runs without these augmentations draw the same items as before.
        mirror = self.mirror_probability > 0 and rng.random() < self.mirror_probability
        if mirror:
            image, mask, mouth = (a[:, ::-1] for a in (image, mask, mouth))
        dy, dx = (int(v) for v in rng.integers(-self.max_translation, self.max_translation + 1, size=2)) \
            if self.max_translation > 0 else (0, 0)
        latents = self.latents[view_name(clip.name, mirror, dy, dx)]
        target, reference_latent = (latents[i].astype(np.float32) for i in (frame, reference))
        stride = image.shape[0] // target.shape[-2]
        image, mask, mouth = (translate(a, stride * dy, stride * dx, axes=(0, 1)) for a in (image, mask, mouth))
        item = {
            "latent": torch.from_numpy(target),
            "reference": torch.from_numpy(reference_latent),
            "masked": torch.from_numpy(apply_mask(image, mask)).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(mask)[None],
            "mouth": torch.from_numpy(mouth)[None],
            "audio": torch.from_numpy(audio_windows(self.features[clip.name], [frame], self.audio_window)[0]),
            "clip": torch.tensor(clip_index),
            "frame": torch.tensor(frame),
            "reference_frame": torch.tensor(reference),
        }
        if self.masked_latents is not None:
            cached = self.masked_latents[masked_view_name(clip.name, shift, mirror, dy, dx)]
            item["masked_latent"] = torch.from_numpy(cached[frame].astype(np.float32))
        return item


def translate(array: np.ndarray, dy: int, dx: int, axes: tuple[int, int]) -> np.ndarray:
    """``array`` moved ``dy`` down ``axes[0]`` and ``dx`` along ``axes[1]``, its edge rows and columns
    repeated into the gap (a face crop taken a little off centre, with no pixels beyond the crop)."""
    if (dy, dx) == (0, 0):
        return np.ascontiguousarray(array)          # most items: no copy unless mirrored
    for axis, offset in zip(axes, (dy, dx)):
        size = array.shape[axis]
        array = np.take(array, np.clip(np.arange(size) - offset, 0, size - 1), axis=axis)
    return np.ascontiguousarray(array)


def target_frames(clips: Sequence[ProcessedClip], names: Sequence[str]) -> np.ndarray:
    """(M, 2) rows (clip index, frame) of every frame with a face in the clips called ``names``."""
    names = set(names)
    rows = valid_frames(clips)
    wanted = [c for c, clip in enumerate(clips) if clip.name in names]
    return rows[np.isin(rows[:, 0], wanted)]


def evenly_spaced(rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows spread over ``rows`` (all of them when there are fewer)."""
    if count >= len(rows):
        return rows
    return rows[np.linspace(0, len(rows) - 1, count).round().astype(np.int64)]
