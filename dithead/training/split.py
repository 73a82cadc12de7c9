"""Train / held-out split, shared by every stage that must not see held-out frames.

Two modes (``split.mode``):

* ``identity`` (paper 4.1: unseen people): every clip of a held-out identity
  is left out of training; sample and evaluate work on those clips.
* ``time`` (a personalised model: one speaker, judged on footage it never
  saw): each clip's last ``val_fraction`` of frames is held out, and the
  ``gap_seconds`` before it are used by nobody, so no neighbouring (near
  identical) frame of the held-out part is trained on.

The split is a pure function of the clips, the ``split.*`` params and the
seed, so every stage computes the same one. Training code sees a clip through
``FrameRangeView``: frames outside its training range read as having no face,
so every consumer of ``clip.valid`` (datasets, reference picking) skips them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Sequence

import numpy as np

from dithead.data.store import ProcessedClip

SPLIT_MODES = ("identity", "time")


@dataclass
class SplitSettings:
    """The ``split:`` params (same names and defaults as params.yaml)."""

    mode: str = "identity"              # identity (paper 4.1: unseen people) or time (a personalised model)
    val_identities: list[str] = field(default_factory=list)   # empty: draw val_identity_count with the seed
    val_identity_count: int = 11
    val_fraction: float = 0.2           # time: each clip's held-out end
    gap_seconds: float = 2.0            # time: used by nobody, before the held-out end


def clip_identity(clip: ProcessedClip) -> str:
    """The person in ``clip``: meta.json's ``identity`` when given, else the clip name."""
    return str(clip.meta.get("identity") or clip.name)


@dataclass
class DataSplit:
    """Which frames of which clips train, and which are held out (frame ranges are [start, stop))."""

    mode: str
    train_frames: dict[str, list[int]]          # clip -> [start, stop) trained on
    validation_frames: dict[str, list[int]]     # clip -> [start, stop) held out
    identities: dict[str, str]                  # clip name -> identity

    @property
    def train(self) -> list[str]:
        return sorted(self.train_frames)

    @property
    def validation(self) -> list[str]:
        return sorted(self.validation_frames)

    def to_json(self) -> dict:
        return {**asdict(self), "train": self.train, "validation": self.validation,
                "validation_identities": sorted({self.identities[c] for c in self.validation})}


def split_by_identity(clips: Sequence[ProcessedClip], val_identities: Sequence[str] = (), val_count: int = 0,
                      seed: int = 0) -> DataSplit:
    """Hold out ``val_identities`` (names), or else ``val_count`` identities drawn with ``seed``."""
    identities = {clip.name: clip_identity(clip) for clip in clips}
    known = sorted(set(identities.values()))
    if val_identities:
        unknown = sorted(set(val_identities) - set(known))
        if unknown:
            raise ValueError(f"validation identities {unknown} are not in the data (identities: {', '.join(known)})")
        held_out = set(val_identities)
    else:
        if val_count < 0:
            raise ValueError(f"the number of validation identities must be >= 0, not {val_count}")
        held_out = set(np.random.default_rng(seed).permutation(known)[:val_count].tolist())
    if len(held_out) >= len(known):
        raise ValueError(f"holding out {len(held_out)} of {len(known)} identities leaves none for training "
                         f"(identities: {', '.join(known)}); hold out fewer validation identities")
    lengths = {clip.name: len(clip) for clip in clips}
    return DataSplit(mode="identity",
                     train_frames={n: [0, lengths[n]] for n in sorted(lengths) if identities[n] not in held_out},
                     validation_frames={n: [0, lengths[n]] for n in sorted(lengths) if identities[n] in held_out},
                     identities=identities)


def split_by_time(clips: Sequence[ProcessedClip], val_fraction: float, gap_frames: int) -> DataSplit:
    """Per clip: frames [0, cut - gap) train, [cut, N) are held out, cut = N - round(N * val_fraction)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"split.val_fraction must be in (0, 1), not {val_fraction}")
    if gap_frames < 0:
        raise ValueError(f"split.gap_seconds must be >= 0, not a gap of {gap_frames} frames")
    train, held_out = {}, {}
    for clip in sorted(clips, key=lambda c: c.name):
        n = len(clip)
        cut = n - int(round(n * val_fraction))
        if cut - gap_frames < 1 or cut >= n:
            raise ValueError(f"clip '{clip.name}' ({n} frames) is too short for a time split with "
                             f"val_fraction {val_fraction} and a gap of {gap_frames} frames")
        train[clip.name], held_out[clip.name] = [0, cut - gap_frames], [cut, n]
    return DataSplit(mode="time", train_frames=train, validation_frames=held_out,
                     identities={clip.name: clip_identity(clip) for clip in clips})


def make_split(clips: Sequence[ProcessedClip], params: SplitSettings | Mapping, seed: int, fps: float) -> DataSplit:
    """The split the ``split:`` params ask for (``fps``: frames per second of the preprocessed clips)."""
    if is_dataclass(params):
        params = asdict(params)
    mode = params.get("mode", "identity")
    if mode == "identity":
        return split_by_identity(clips, params.get("val_identities") or (), params.get("val_identity_count", 0), seed)
    if mode == "time":
        return split_by_time(clips, params["val_fraction"], int(round(params["gap_seconds"] * fps)))
    raise ValueError(f"split.mode must be one of {', '.join(SPLIT_MODES)}, not {mode!r}")


class FrameRangeView:
    """A clip whose frames outside [start, stop) read as having no face; everything else is the clip's own."""

    def __init__(self, clip: ProcessedClip, start: int, stop: int):
        self.clip, self.start, self.stop = clip, int(start), int(stop)
        self._valid: np.ndarray | None = None

    def __getattr__(self, name: str):
        return getattr(self.clip, name)

    def __len__(self) -> int:
        return len(self.clip)

    @property
    def valid(self) -> np.ndarray:
        if self._valid is None:
            valid = np.array(self.clip.valid, dtype=bool)
            valid[:self.start] = False
            valid[self.stop:] = False
            self._valid = valid
        return self._valid

    def fingerprint(self) -> str:
        """The clip's fingerprint over the frames this view shows (see ``ProcessedClip.fingerprint``)."""
        return ProcessedClip.fingerprint(self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_valid": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def training_clips(clips: Sequence[ProcessedClip], split: DataSplit) -> list[FrameRangeView]:
    """The clips with training frames, each seen only through its training range."""
    return [FrameRangeView(clip, *split.train_frames[clip.name]) for clip in clips if clip.name in split.train_frames]


def reference_clips(clips: Sequence[ProcessedClip], split: DataSplit) -> list[ProcessedClip | FrameRangeView]:
    """Per clip, where a held-out frame may take its reference frame from: the clip's training range when
    it has one (time split: the footage a user has), else the whole clip (identity split: the unseen
    person's own frames, as at inference)."""
    return [FrameRangeView(clip, *split.train_frames[clip.name]) if clip.name in split.train_frames else clip
            for clip in clips]


def held_out_frames(clips: Sequence[ProcessedClip], split: DataSplit) -> np.ndarray:
    """(M, 2) rows (clip index, frame) of every held-out frame with a face."""
    rows = []
    for c, clip in enumerate(clips):
        if clip.name in split.validation_frames:
            start, stop = split.validation_frames[clip.name]
            frames = start + np.flatnonzero(np.asarray(clip.valid)[start:stop])
            rows.append(np.stack([np.full(len(frames), c), frames], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), dtype=np.int64)


def valid_frames(clips: Sequence[ProcessedClip]) -> np.ndarray:
    """(M, 2) int64 rows (clip index, frame index) of every frame with a face."""
    rows = [np.stack([np.full(len(idx), c), idx], axis=1)
            for c, clip in enumerate(clips) if len(idx := np.flatnonzero(np.asarray(clip.valid)))]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), dtype=np.int64)
