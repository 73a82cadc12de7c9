"""Train / validation split by identity, shared by every stage that must not see held-out people.

The VQGANs and the DiT train only on training identities; sample and
evaluate work on the held-out ones (paper 4.1: unseen identities). The split
is a pure function of the clip names, ``split.*`` params and the seed, so
every stage computes the same one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .store import ProcessedClip


def clip_identity(clip: ProcessedClip) -> str:
    """The person in ``clip``: meta.json's ``identity`` when given, else the clip name."""
    return str(clip.meta.get("identity") or clip.name)


@dataclass
class IdentitySplit:
    """Clip names for training and validation; no identity is on both sides."""

    train: list[str]
    validation: list[str]
    identities: dict[str, str]          # clip name -> identity

    def to_json(self) -> dict:
        return {**asdict(self), "validation_identities": sorted({self.identities[c] for c in self.validation})}


def split_by_identity(clips: Sequence[ProcessedClip], val_identities: Sequence[str] = (), val_count: int = 0,
                      seed: int = 0) -> IdentitySplit:
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
    names = sorted(identities)
    return IdentitySplit(train=[n for n in names if identities[n] not in held_out],
                         validation=[n for n in names if identities[n] in held_out],
                         identities=identities)


def training_clips(clips: Sequence[ProcessedClip], split: IdentitySplit) -> list[ProcessedClip]:
    keep = set(split.train)
    return [clip for clip in clips if clip.name in keep]
