"""What every stage script in ``stages/`` shares: where it reads and writes, and how it stops on a user error.

``StagePaths`` is the ``paths:`` section of params.yaml. dvc.yaml declares the
same paths through ``${paths.*}``, so each is written once, in params.yaml.

``clear_errors`` turns the errors a stage expects (a missing input, a bad
parameter, an interrupted training run) into ``SystemExit("<stage>: <message>")``:
the message says what is wrong and what to run or set, without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator


class StageError(Exception):
    """The stage cannot go on; the message says why (and what to run or set)."""


@contextlib.contextmanager
def clear_errors(stage: str, *errors: type[BaseException]) -> Iterator[None]:
    """Within ``with``, ``StageError`` and ``errors`` end the stage with ``<stage>: <message>`` (exit status 1)."""
    try:
        yield
    except (StageError, *errors) as error:
        raise SystemExit(f"{stage}: {error}") from None


@dataclass
class StagePaths:
    """The ``paths:`` params (same names and defaults as params.yaml), relative to the project folder."""

    processed: Path = Path("data/processed")          # preprocess: one folder per clip
    features: Path = Path("data/features")            # extract_audio_features: <clip>.npy
    models: Path = Path("models")                     # vqgan_masked/, vqgan_gt/, dit/
    samples: Path = Path("outputs/samples")           # sample
    interpolated: Path = Path("outputs/interpolated")  # interpolate
    evaluation: Path = Path("outputs/eval")           # evaluate: report, side-by-side video
    metrics: Path = Path("metrics")                   # preprocess.json, preview/, eval.json
    dvclive: Path = Path("dvclive")                   # <stage>/: dvclive logs and plots
    checkpoints: Path = Path("checkpoints")           # <stage>/: resumable training state

    def __post_init__(self):
        for field in fields(self):
            setattr(self, field.name, Path(getattr(self, field.name)))
