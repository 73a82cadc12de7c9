"""Where a streaming job spends its time: wall-clock seconds per named phase.

Generation interleaves its phases frame by frame (decode a frame, sample a
chunk, paste, watermark, encode), so a phase is timed each time it runs and
the times add up. Phases nest exclusively: time spent in an inner phase
(e.g. encoding masked frames inside sampling) counts for the inner one only,
so the phases sum to the job's wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

# Phases that run the diffusion model and its autoencoders; everything else (frame interpolation
# included) is the pre- and post-processing around them, which must keep up with a fast sampler.
MODEL_PHASES = ("masked encode", "model", "latent decode")


class PhaseTimer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._switch()
        self._stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self._stack.pop()

    def _switch(self) -> None:
        """Charge the time since the last switch to the innermost running phase."""
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    def iterate(self, name: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the time spent producing each one charged to ``name``."""
        iterator = iter(items)
        while True:
            with self.phase(name):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    def report(self, frames: int) -> dict:
        """Seconds per phase, and output frames per second of the phases outside ``MODEL_PHASES``."""
        other = sum(s for name, s in self.seconds.items() if name not in MODEL_PHASES)
        return {"phase_seconds": {name: round(s, 3) for name, s in self.seconds.items()},
                "non_model_frames_per_second": round(frames / other, 2) if other > 0 else None}
