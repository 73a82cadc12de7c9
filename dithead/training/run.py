"""Pieces shared by the training stages (VQGANs, DiT).

Distributed training, mixed precision and gradient accumulation are
``accelerate``'s; this module adds what a long DVC stage needs on top:

* a data order that is a pure function of (seed, optimizer step), so a run
  resumed from a checkpoint sees exactly the batches an uninterrupted run
  would have seen, and ends after the same number of steps;
* checkpoints in ``checkpoints/<stage>/`` written atomically with
  ``Accelerator.save_state`` and resumed from the newest one, discarded when
  the run's configuration changed;
* SIGTERM/SIGINT turned into "save a checkpoint and stop" at the next step;
* dvclive logging whose history survives an interruption (it is saved inside
  each checkpoint), a tqdm bar with loss and images/s, and an atomic final
  ``save_pretrained``.

``TrainingRun`` is the loop both training stages share; they supply a
step, the training metrics to log, a validation and (optionally) an
images-only preview::

    accelerator = make_accelerator(mixed_precision="auto", gradient_accumulation_steps=2, seed=0)
    model, optimizer = accelerator.prepare(model, optimizer)
    run = TrainingRun(accelerator, steps=steps, samples_per_step=..., desc="x",
                      checkpoint_dir="checkpoints/train_x", fingerprint=checkpoint_settings(run_config),
                      live_dir="dvclive/train_x", cadence=Cadence(log_every=50, validate_every=1000,
                      image_every=1000, checkpoint_every=1000))        # resumes here, if it can
    batches = iter(make_dataloader(dataset, batch_size=8, accelerator=accelerator, seed=0, start_step=run.start))
    run.loop(step=train_one_step, train_metrics=lambda step, rate: {...}, validate=validate)
    final = validate(steps, True)
    save_pretrained_atomic(accelerator, "models/x", model)
    run.finish()                                                        # ends dvclive, deletes the checkpoints
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from dithead.device import check_precision, cpu_threads
from dithead.fileio import atomic_path, write_json

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
FINGERPRINT_FILE = "run.json"
LIVE_SUBDIR = "live"


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving ``checkpoint`` at ``step``."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; state saved to {checkpoint}; run the same command again to resume")
        self.step = step
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- accelerator


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` -> ``bf16`` where the GPU supports it, else ``no`` (CPU bf16 is slower than fp32)."""
    check_precision(choice, "mixed_precision")
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(*, mixed_precision: str = "auto", gradient_accumulation_steps: int = 1, seed: int = 0) -> Accelerator:
    """An Accelerator (one or many GPUs/nodes, as ``accelerate launch`` set up) with every RNG seeded.

    The seed is the same on every process so all replicas start from identical weights. A single
    process on the CPU uses ``cpu_threads()`` threads.
    """
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, not {gradient_accumulation_steps}")
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision),
                              gradient_accumulation_steps=gradient_accumulation_steps)
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        # `accelerate launch` starts every process with OMP_NUM_THREADS=1, right for processes sharing the
        # cores, but one CPU process would then train on one core (1.7x slower on 2 cores).
        torch.set_num_threads(cpu_threads())
    set_seed(seed)
    return accelerator


# --------------------------------------------------------------------------- data order


class StepSampler(Sampler[int]):
    """Endless, reproducible sample order, starting at optimizer step ``start_step``.

    Draw ``d`` (counted over all processes from step 0) takes item
    ``perm_e[d % n]`` of epoch ``e = d // n``, where ``perm_e`` is a permutation
    seeded by ``(seed, e)``. Each optimizer step consumes
    ``batch_size * gradient_accumulation_steps * num_processes`` draws, so the
    batches of step ``s`` depend only on ``(seed, s)``: a resumed run continues
    the exact sequence of an uninterrupted one.

    It yields ``e * n + item``; datasets used with it take any index ``i >= 0``
    as item ``i % len`` and may seed per-sample augmentation with ``i``, which
    then differs between epochs yet is reproducible.
    """

    def __init__(self, num_items: int, *, batch_size: int, seed: int, start_step: int = 0,
                 gradient_accumulation_steps: int = 1, num_processes: int = 1, process_index: int = 0):
        if num_items < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.first_micro_batch = start_step * gradient_accumulation_steps

    def __iter__(self) -> Iterator[int]:
        epoch, permutation = -1, None
        micro_batch = self.first_micro_batch
        while True:
            first_draw = (micro_batch * self.num_processes + self.process_index) * self.batch_size
            for draw in range(first_draw, first_draw + self.batch_size):
                if draw // self.num_items != epoch:
                    epoch = draw // self.num_items
                    permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
                yield epoch * self.num_items + int(permutation[draw % self.num_items])
            micro_batch += 1


def make_dataloader(dataset: Dataset, *, batch_size: int, accelerator: Accelerator, seed: int,
                    start_step: int = 0, workers: int = 0) -> DataLoader:
    """An endless DataLoader over ``dataset`` in :class:`StepSampler` order, this process's share only.

    Not passed through ``accelerator.prepare``: the sampler already shards the
    data between processes, and ``prepare`` would need a finite length.
    Batches stay on the CPU; move them with ``.to(accelerator.device)``.
    """
    sampler = StepSampler(len(dataset), batch_size=batch_size, seed=seed, start_step=start_step,
                          gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
                          num_processes=accelerator.num_processes, process_index=accelerator.process_index)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=accelerator.device.type == "cuda", persistent_workers=workers > 0)


# --------------------------------------------------------------------------- checkpoints


# Settings of every training stage that do not change the weights a step
# produces: a checkpoint stays valid when they change. ``steps`` is among them
# because the learning rates are constant, so a longer run continues a shorter
# one exactly (``Checkpointer.resume(max_step=steps)`` discards checkpoints past
# a lowered ``steps``).
BOOKKEEPING = frozenset({"steps", "log_every", "checkpoint_every", "workers"})


def checkpoint_settings(config: Mapping[str, Any], bookkeeping: Iterable[str] = ()) -> dict[str, Any]:
    """The settings in ``config`` a checkpoint depends on: all but :data:`BOOKKEEPING` and the stage's own
    ``bookkeeping`` keys (how often it validates, how it logs)."""
    skip = BOOKKEEPING | set(bookkeeping)
    return {key: value for key, value in _flat_mask(config).items() if key not in skip}


def _flat_mask(config: Mapping[str, Any]) -> dict[str, Any]:
    """``mask: {kernel_size: ...}`` as the ``mask_kernel_size``, ... keys that checkpoint fingerprints have
    always used (configs once held the mask settings as loose fields): checkpoints of a run started before
    the configs took a ``MaskSettings`` still match and resume."""
    flat = {key: value for key, value in config.items() if key != "mask"}
    if isinstance(config.get("mask"), Mapping):
        flat.update({f"mask_{key}": value for key, value in config["mask"].items()})
    return flat


class Checkpointer:
    """Resumable training state in ``directory/step_<N>/`` (``Accelerator.save_state``).

    Everything passed to ``accelerator.prepare`` (models, optimizers, schedulers)
    and objects given to ``accelerator.register_for_checkpointing`` are saved,
    with every process's RNG state. ``fingerprint`` describes the run (its
    parameters, its data); checkpoints of a run with another fingerprint are
    deleted instead of resumed. ``live_dir`` (dvclive's directory) is copied
    into each checkpoint and put back on resume, so the logged history matches
    the resumed step even though DVC deletes stage outputs before a rerun.
    The newest ``keep`` checkpoints are kept.
    """

    def __init__(self, accelerator: Accelerator, directory: str | os.PathLike, *, every: int,
                 fingerprint: Mapping[str, Any], live_dir: str | os.PathLike | None = None, keep: int = 2):
        self.accelerator = accelerator
        self.directory = Path(directory)
        self.every = every
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.live_dir = Path(live_dir) if live_dir is not None else None
        self.keep = max(1, keep)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, path), oldest first (partial saves never match the name)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir()
                 if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def resume(self, max_step: int | None = None) -> int:
        """Load the newest checkpoint of this run; return its step (0 when starting fresh).

        Call it after ``accelerator.prepare``. Checkpoints beyond ``max_step``
        (the run's total steps was lowered) cannot be continued and are deleted
        like those of another configuration.
        """
        if self.accelerator.is_main_process and self.directory.is_dir():
            for partial in self.directory.glob(".tmp-step_*"):  # saves cut short by a kill
                shutil.rmtree(partial, ignore_errors=True)
        # Every process decides from the directory as it is now, before anything
        # in it is deleted, so all take the same branch and pass the same
        # barriers (a process deciding after the deletion would see a fresh
        # start and skip a barrier the others wait at).
        latest = self.latest()
        beyond = max_step is not None and latest is not None and latest[0] > max_step
        stale = beyond or not self._fingerprint_matches()
        self.accelerator.wait_for_everyone()
        if stale:
            if self.accelerator.is_main_process and self.directory.exists():
                reason = (f"checkpoints beyond the run's {max_step} steps" if beyond
                          else "checkpoints of a different run configuration")
                self.accelerator.print(f"{self.directory}: {reason}; starting over")
                shutil.rmtree(self.directory)
            self.accelerator.wait_for_everyone()
        if stale or latest is None:
            return 0
        step, path = latest
        self.accelerator.load_state(str(path))
        if self.live_dir is not None and self.accelerator.is_main_process and (path / LIVE_SUBDIR).is_dir():
            shutil.rmtree(self.live_dir, ignore_errors=True)
            shutil.copytree(path / LIVE_SUBDIR, self.live_dir)
        self.accelerator.wait_for_everyone()
        self.accelerator.print(f"resumed from {path} (step {step})")
        return step

    def maybe_save(self, step: int) -> Path | None:
        """Save when ``step`` is a multiple of ``every`` (0 disables periodic saves)."""
        if self.every > 0 and step % self.every == 0:
            return self.save(step)
        return None

    def save(self, step: int) -> Path:
        """Write the state of ``step``; it appears under its final name only when complete."""
        final = self.directory / f"step_{step:08d}"
        tmp = self.directory / f".tmp-step_{step:08d}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.directory.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if self.live_dir is not None and self.live_dir.is_dir():
                shutil.copytree(self.live_dir, tmp / LIVE_SUBDIR)
            write_json(self.directory / FINGERPRINT_FILE, self.fingerprint)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for _, old in self.checkpoints()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def clear(self) -> None:
        """Delete all checkpoints (after the final model is saved)."""
        if self.accelerator.is_main_process:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _fingerprint_matches(self) -> bool:
        path = self.directory / FINGERPRINT_FILE
        if not path.is_file():
            return not self.checkpoints()
        try:
            return json.loads(path.read_text(encoding="utf-8")) == self.fingerprint
        except json.JSONDecodeError:
            return False


# --------------------------------------------------------------------------- signals


class GracefulStop:
    """Within ``with``, SIGTERM and SIGINT ask the loop to stop at the next step.

    The loop checks :meth:`should_stop` after each optimizer step, saves a
    checkpoint and exits. A second signal stops at once (default handling).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True

    def should_stop(self, accelerator: Accelerator | None = None) -> bool:
        """True when any process got a signal (all processes agree, so they stop at the same step)."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


# --------------------------------------------------------------------------- logging


def make_live(accelerator: Accelerator, directory: str | os.PathLike, *, resume: bool):
    """A dvclive ``Live`` on the main process (``None`` on the others).

    ``resume=True`` continues the history a :class:`Checkpointer` restored;
    otherwise the directory's old metrics and plots are cleared. dvc.yaml
    declares the metrics and plots itself, so dvclive writes no dvc.yaml and
    saves no experiment of its own.
    """
    if not accelerator.is_main_process:
        return None
    from dvclive import Live

    return Live(str(directory), resume=resume, dvcyaml=None, save_dvc_exp=False, report=None)


def log_metrics(live, step: int, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` at ``step`` and update ``metrics.json`` (no-op for ``live=None``)."""
    if live is None:
        return
    live.step = step
    for name, value in metrics.items():
        live.log_metric(name, float(value))
    live.make_summary()


def log_image(live, step: int, name: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image under dvclive's ``plots/images/`` (the newest replaces the last)."""
    if live is None:
        return
    live.step = step
    live.log_image(name, image)


class Throughput:
    """Images per second over the last ``window`` seconds (all processes together)."""

    def __init__(self, window: float = 10.0):
        self.window = window
        self._events: list[tuple[float, int]] = [(time.perf_counter(), 0)]

    def update(self, images: int) -> float:
        now = time.perf_counter()
        self._events.append((now, images))
        while len(self._events) > 2 and now - self._events[1][0] > self.window:
            self._events.pop(0)
        elapsed = now - self._events[0][0]
        return sum(n for _, n in self._events[1:]) / elapsed if elapsed > 0 else 0.0


def progress_bar(accelerator: Accelerator, *, total: int, initial: int = 0, desc: str = "train") -> tqdm:
    """A tqdm bar over optimizer steps, shown by the main process only."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=not accelerator.is_local_main_process)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Cadence:
    """How often a run logs its training metrics, validates, draws images and saves a checkpoint (steps)."""

    log_every: int
    validate_every: int
    image_every: int
    checkpoint_every: int           # 0: only on a signal


class TrainingRun:
    """One training run around a stage's step: resume, dvclive, signals, progress, cadence and checkpoints.

    Created after ``accelerator.prepare`` (and ``register_for_checkpointing``):
    it resumes from the newest checkpoint of the same ``fingerprint`` in
    ``checkpoint_dir`` (``start`` is its step, 0 for a fresh run) and opens
    dvclive in ``live_dir`` (``live``, ``None`` off the main process).
    ``loop`` runs steps ``start + 1 .. steps``; ``finish`` ends the run after
    the stage has saved its model.
    """

    def __init__(self, accelerator: Accelerator, *, steps: int, samples_per_step: int, desc: str,
                 checkpoint_dir: str | os.PathLike, fingerprint: Mapping[str, Any], live_dir: str | os.PathLike,
                 cadence: Cadence):
        self.accelerator, self.steps, self.samples_per_step, self.desc = accelerator, steps, samples_per_step, desc
        self.cadence = cadence
        self.checkpointer = Checkpointer(accelerator, checkpoint_dir, every=cadence.checkpoint_every,
                                         fingerprint=fingerprint, live_dir=live_dir)
        self.start = self.checkpointer.resume(max_step=steps)
        self.live = make_live(accelerator, live_dir, resume=self.start > 0)

    def loop(self, *, step: Callable[[int], None], train_metrics: Callable[[int, float], Mapping[str, float]],
             validate: Callable[[int, bool], Any], images: Callable[[int], Any] | None = None) -> None:
        """Each step: ``step(step)`` (the optimizer step and its micro-batches); at log steps (and the last)
        ``train_metrics(step, samples_per_second)`` on every process, logged by the main one; before the last
        step, ``validate(step, with_images)`` every ``validate_every`` steps, else ``images(step)`` every
        ``image_every``; a checkpoint every ``checkpoint_every``. A signal saves a checkpoint and raises
        ``TrainingInterrupted``. The final validation is the stage's (after ``loop``)."""
        cadence, accelerator = self.cadence, self.accelerator
        images = images or (lambda at: validate(at, True))
        throughput = Throughput()
        with GracefulStop() as stop, progress_bar(accelerator, total=self.steps, initial=self.start,
                                                  desc=self.desc) as bar:
            for at in range(self.start + 1, self.steps + 1):
                step(at)
                rate = throughput.update(self.samples_per_step)
                bar.update(1)
                if at % cadence.log_every == 0 or at == self.steps:
                    metrics = dict(train_metrics(at, rate))
                    if "train/loss" in metrics:
                        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", samples_s=f"{rate:.1f}")
                    log_metrics(self.live, at, metrics)
                if at != self.steps:
                    if at % cadence.validate_every == 0:
                        validate(at, at % cadence.image_every == 0)
                    elif at % cadence.image_every == 0:
                        images(at)
                saved = self.checkpointer.maybe_save(at)
                if stop.should_stop(accelerator) and at != self.steps:
                    raise TrainingInterrupted(at, saved or self.checkpointer.save(at))

    def finish(self) -> None:
        """After the model is saved: end dvclive and delete the checkpoints."""
        if self.live is not None:
            self.live.end()
        self.checkpointer.clear()


# --------------------------------------------------------------------------- final output


def save_pretrained_atomic(accelerator: Accelerator, path: str | os.PathLike, model,
                           subfolders: Mapping[str, Any] | None = None) -> None:
    """``model.save_pretrained(path)`` (+ ``subfolders[name].save_pretrained(path/name)``), all or nothing.

    Models are unwrapped from DDP/compile wrappers first; only the main process writes.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_path(path) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp)
            for name, extra in (subfolders or {}).items():
                accelerator.unwrap_model(extra).save_pretrained(tmp / name)
    accelerator.wait_for_everyone()


def check_minimums(config, minimums: Mapping[str, float], section: str) -> None:
    """ValueError naming ``<section>.<field>`` for the first field of ``config`` below its minimum."""
    for name, minimum in minimums.items():
        if getattr(config, name) < minimum:
            raise ValueError(f"{section}.{name} must be >= {minimum}, not {getattr(config, name)}")
