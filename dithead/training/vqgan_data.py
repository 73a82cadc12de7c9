"""Training images from preprocessed clips (``dithead.data.store.ProcessedClip``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dithead.data.mask import MaskSettings, apply_mask, lower_face_mask, mouth_box_mask, random_shift
from dithead.data.store import ProcessedClip
from dithead.models.latents import image_to_tensor
from dithead.training.split import valid_frames


def split_frames(clips: Sequence[ProcessedClip], val_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the valid frames into (train, validation) rows of (clip index, frame index).

    Validation takes the last valid frames of each clip, ``val_frames`` in all,
    shared out evenly. A contiguous tail rather than random frames: neighbouring
    frames are near copies, so randomly held-out frames would measure memory,
    not reconstruction of unseen images.
    """
    frames = valid_frames(clips)
    if val_frames < 0:
        raise ValueError(f"val_frames must be >= 0, not {val_frames}")
    if len(clips) == 0 or len(frames) == 0:
        raise ValueError("no frames with a face in the preprocessed clips")
    train, val = [], []
    per_clip = np.full(len(clips), val_frames // len(clips))
    per_clip[: val_frames % len(clips)] += 1
    for c, clip in enumerate(clips):
        rows = frames[frames[:, 0] == c]
        if per_clip[c] and per_clip[c] >= len(rows):
            raise ValueError(f"val_frames={val_frames} leaves no training frames in clip '{clip.name}' "
                             f"({len(rows)} frames with a face)")
        cut = len(rows) - per_clip[c]
        train.append(rows[:cut])
        val.append(rows[cut:])
    return np.concatenate(train), np.concatenate(val)


class FrameDataset(Dataset):
    """Single face crops as ``(image, pixel_weight)``: float (3, H, W) in [-1, 1] and float (1, H, W).

    With ``masked=True`` the lower face is blacked out with the mask of
    ``dithead.data.mask`` (``mask``: Gaussian edge of ``kernel_size``/``sigma``), moved
    by a random shift of up to ``mask.max_shift`` pixels (paper 3.1). ``frames`` are
    (clip index, frame index) rows (default: every valid frame). Index ``i``
    may exceed the length (see ``dithead.training.run.StepSampler``): it reads
    frame ``i % len`` and seeds the shift with ``(seed, i)``, so a sample is
    the same in every run and in any DataLoader worker.

    ``pixel_weight`` is what each pixel counts in the reconstruction loss:
    ``mouth_weight`` in the box around the frame's lips
    (``dithead.data.mask.mouth_box_mask``), 1 elsewhere. Only for unmasked
    frames: a masked frame's lips are hidden.
    """

    def __init__(self, clips: Sequence[ProcessedClip], masked: bool, mask: MaskSettings, seed: int,
                 frames: np.ndarray | None = None, mouth_weight: float = 1.0):
        if masked and mouth_weight != 1:
            raise ValueError(f"mouth_weight {mouth_weight}: a masked frame's lips are hidden; use 1")
        self.clips = list(clips)
        self.masked = masked
        self.mouth_weight = mouth_weight
        self.mask = mask
        self.seed = seed
        self.frames = valid_frames(self.clips) if frames is None else np.asarray(frames, dtype=np.int64)
        if len(self.frames) == 0:
            raise ValueError("FrameDataset: no frames to read")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip_index, frame = self.frames[index % len(self.frames)]
        clip = self.clips[clip_index]
        image = clip.crop(int(frame))
        if self.masked:
            image = apply_mask(image, self._mask(clip, int(frame), image.shape[:2], index))
        weight = np.ones(image.shape[:2], dtype=np.float32)
        if self.mouth_weight != 1:
            weight += (self.mouth_weight - 1) * mouth_box_mask(np.asarray(clip.landmarks[int(frame)]), image.shape[:2])
        return image_to_tensor(image), torch.from_numpy(weight)[None]

    def _mask(self, clip: ProcessedClip, frame: int, size: tuple[int, int], index: int) -> np.ndarray:
        max_shift = self.mask.max_shift
        shift = random_shift(np.random.default_rng([self.seed, index]), max_shift) if max_shift > 0 else (0, 0)
        return lower_face_mask(np.asarray(clip.landmarks[frame]), size, self.mask.kernel_size, self.mask.sigma,
                               shift=shift, region=self.mask.region)


def crop_size(clips: Sequence[ProcessedClip]) -> int:
    """The common square crop size of ``clips``; an error names the clip that differs."""
    sizes = {}
    for clip in clips:
        valid = np.flatnonzero(np.asarray(clip.valid))
        if len(valid) == 0:
            raise ValueError(f"clip '{clip.name}' has no frame with a face")
        h, w = clip.crop(int(valid[0])).shape[:2]
        if h != w:
            raise ValueError(f"clip '{clip.name}': crops are {w}x{h}, expected square crops")
        sizes[clip.name] = h
    if not sizes:
        raise ValueError("no preprocessed clips")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"clips have different crop sizes: {sizes}; preprocess them with one preprocess.size")
    return next(iter(sizes.values()))
