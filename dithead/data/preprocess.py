"""Preprocess talking-head clips (paper 3.1): track one face, crop, store, align audio.

``process_clip`` streams one video (memory does not grow with its length) and
writes ``<out>/<name>/`` as docs/ARCHITECTURE.md describes. ``process_dir``
runs it over every clip of a folder in parallel and returns a report; a clip
that cannot be used is skipped with its reason and the others go on.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dithead.data.audio import AudioError, align_to_frames, load_audio, write_wav
from dithead.data.face import (N_LANDMARKS, BoxSmoother, FaceTracker, TrackedFrame, crop_box, landmark_box, square_box,
                               to_crop_coords)
from dithead.data.store import CropStoreWriter
from dithead.data.video_reader import VideoError, is_video_file, iter_frames, probe_video
from dithead.fileio import atomic_path, write_json

log = logging.getLogger(__name__)

AUDIO_WINDOW = 11   # frames in one audio window: a clip needs at least this many


@dataclass
class PreprocessConfig:
    """The ``preprocess:`` params (same names and defaults as params.yaml), plus ``data.fps`` and
    ``data.sample_rate``."""

    fps: float = 25.0
    sample_rate: int = 16000
    size: int = 256
    margin: float = 0.6
    smooth_frames: int = 9
    detection_confidence: float = 0.5
    tracking_confidence: float = 0.5
    min_valid_frames: int = 25
    codec: str = "jpg"
    jpeg_quality: int = 95
    workers: int = 2                # clips processed in parallel (the stage passes it to ``process_dir``)
    preview_frames: int = 4         # frames per clip in the preprocess stage's mask preview


class ClipSkipped(Exception):
    """The clip was read but cannot be used (e.g. too few frames with a face)."""


@dataclass
class ClipResult:
    name: str
    video: str
    ok: bool
    reason: str = ""
    n_frames: int = 0
    n_valid: int = 0
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)


def find_clips(raw_dir: str | os.PathLike) -> list[tuple[Path, Path | None]]:
    """(video, wav beside it or None) for every video in ``raw_dir``, sorted by name."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: raw data folder not found (put videos there, or set data.raw_dir)")
    videos = sorted(p for p in raw.iterdir() if is_video_file(p))
    seen: dict[str, Path] = {}
    for video in videos:
        if video.stem in seen:
            raise ValueError(f"{raw}: two videos would both be clip '{video.stem}': {seen[video.stem].name} "
                             f"and {video.name}; rename one")
        seen[video.stem] = video
    return [(v, _sidecar_wav(v)) for v in videos]


def _sidecar_wav(video: Path) -> Path | None:
    for suffix in (".wav", ".WAV"):
        wav = video.with_suffix(suffix)
        if wav.is_file():
            return wav
    return None


def process_clip(video: str | os.PathLike, out_dir: str | os.PathLike, cfg: PreprocessConfig,
                 audio: str | os.PathLike | None = None, name: str | None = None,
                 progress: bool = False) -> ClipResult:
    """Preprocess one clip into ``out_dir/<name>``; raises VideoError, AudioError or ClipSkipped."""
    video = Path(video)
    name = name or video.stem
    start = time.perf_counter()
    info = probe_video(video)
    sound = load_audio(audio if audio is not None else video, cfg.sample_rate)
    with atomic_path(Path(out_dir) / name) as tmp:
        tmp.mkdir(parents=True)
        expected = int(info.duration * cfg.fps + 0.5)
        track = _track_and_crop(video, tmp, cfg, expected if progress else None)
        n_frames, n_valid = len(track["valid"]), int(np.sum(track["valid"]))
        needed = max(cfg.min_valid_frames, AUDIO_WINDOW)
        if n_valid < needed:
            raise ClipSkipped(f"{video}: only {n_valid} of {n_frames} frames have a face; at least {needed} are needed "
                              f"(preprocess.min_valid_frames)")
        samples, padded = align_to_frames(sound.samples, n_frames, cfg.fps, cfg.sample_rate)
        write_wav(tmp / "audio.wav", samples, cfg.sample_rate)
        for key, array in track.items():
            np.save(tmp / f"{key}.npy", array)
        meta = _meta(name, video, audio, info, sound, cfg, n_frames, track["valid"], padded)
        write_json(tmp / "meta.json", meta)
    return ClipResult(name, str(video), True, n_frames=n_frames, n_valid=n_valid,
                      seconds=time.perf_counter() - start, meta=meta)


def _track_and_crop(video: Path, out: Path, cfg: PreprocessConfig, total: int | None) -> dict[str, np.ndarray]:
    """Stream frames through tracker, box smoother and crop store; return the per-frame arrays."""
    landmarks, boxes, valid, source_index = [], [], [], []
    smoother = BoxSmoother(cfg.smooth_frames)
    bar = tqdm(total=total, desc=video.name, unit="frame", disable=total is None, leave=False)

    def store(ready):
        for frame, smoothed in ready:
            box = square_box(smoothed, cfg.margin)
            writer.append(crop_box(frame.image, box, cfg.size))
            pts = np.full((N_LANDMARKS, 2), np.nan, np.float32) if frame.landmarks is None \
                else to_crop_coords(frame.landmarks, box, cfg.size)
            landmarks.append(pts)
            boxes.append(box)
            valid.append(frame.landmarks is not None)
            source_index.append(frame.source_index)
            bar.update()

    with FaceTracker(cfg.detection_confidence, cfg.tracking_confidence) as tracker, \
            CropStoreWriter(out, cfg.codec, cfg.jpeg_quality) as writer:
        for frame in iter_frames(video, cfg.fps):
            points = tracker(frame.image)
            box = None if points is None else landmark_box(points)
            store(smoother.push(TrackedFrame(frame.index, frame.source_index, frame.image, points, box)))
        store(smoother.flush())
    bar.close()
    return {"landmarks": np.asarray(landmarks, np.float32).reshape(-1, N_LANDMARKS, 2),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "valid": np.asarray(valid, bool),
            "source_index": np.asarray(source_index, np.int32)}


IDENTITY_SEPARATOR = "__"


def clip_identity(name: str) -> str:
    """The person in a clip, from its name: ``<identity>__<anything>`` (e.g. ``WRA_Obama__03``), else the name.

    Several clips of one person must share an identity so that the train /
    validation split never puts the same person on both sides.
    """
    return name.split(IDENTITY_SEPARATOR, 1)[0] if IDENTITY_SEPARATOR in name else name


def _meta(name, video, audio, info, sound, cfg, n_frames, valid, padded) -> dict:
    missing = np.nonzero(~valid)[0]
    return {
        "name": name,
        "identity": clip_identity(name),
        "source": {"video": str(video), "audio": str(audio) if audio else str(video),
                   "width": info.width, "height": info.height, "fps": info.fps, "codec": info.codec,
                   "frames": info.n_frames, "duration": info.duration},
        "fps": cfg.fps,
        "n_frames": n_frames,
        "size": cfg.size,
        "margin": cfg.margin,
        "audio": {"sample_rate": cfg.sample_rate, "source_rate": sound.source_rate,
                  "source_channels": sound.source_channels, "source_seconds": round(sound.duration, 4),
                  "seconds": n_frames / cfg.fps, "padded_samples": max(padded, 0), "trimmed_samples": max(-padded, 0)},
        "frames_without_face": int(len(missing)),
        "frames_without_face_index": missing.tolist(),
    }


def _process_one(args) -> ClipResult:
    video, wav, out_dir, cfg, progress = args
    try:
        return process_clip(video, out_dir, cfg, audio=wav, progress=progress)
    except (VideoError, AudioError, ClipSkipped) as exc:
        return ClipResult(Path(video).stem, str(video), False, reason=str(exc))
    except Exception as exc:  # a bug or an unforeseen file problem: keep the other clips going
        traceback.print_exc()
        return ClipResult(Path(video).stem, str(video), False,
                          reason=f"{video}: unexpected error {type(exc).__name__}: {exc}")


def process_dir(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: PreprocessConfig,
                workers: int = 1) -> list[ClipResult]:
    """Preprocess every clip of ``raw_dir`` into ``out_dir`` (``workers`` clips at a time)."""
    clips = find_clips(raw_dir)
    if not clips:
        raise FileNotFoundError(f"{raw_dir}: no video files found (extensions: .mp4 .mov .mkv .avi .webm ...)")
    jobs = [(video, wav, out_dir, cfg, workers <= 1) for video, wav in clips]
    bar = tqdm(total=len(jobs), desc="preprocess", unit="clip")
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_process_one(job))
            bar.update()
    else:
        # spawn: mediapipe's graphs must not be forked from a parent process.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_process_one, job): job for job in jobs}
            for future in as_completed(futures):
                results.append(_result_or_crash(future, futures[future][0]))
                bar.update()
    bar.close()
    return sorted(results, key=lambda r: r.name)


def _result_or_crash(future, video: Path) -> ClipResult:
    """The worker's result; a worker that died (segfault, out of memory) skips only its clip."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        return ClipResult(Path(video).stem, str(video), False,
                          reason=f"{video}: the worker processing it crashed ({exc}); retry with preprocess.workers: 1")


def report(results: list[ClipResult]) -> dict:
    """Summary for metrics/preprocess.json: totals, per-clip figures, skipped clips with reasons."""
    done = [r for r in results if r.ok]
    return {
        "clips": len(done),
        "skipped": len(results) - len(done),
        "frames": sum(r.n_frames for r in done),
        "frames_without_face": sum(r.n_frames - r.n_valid for r in done),
        "per_clip": {r.name: {"frames": r.n_frames, "valid": r.n_valid, "seconds": round(r.seconds, 2)} for r in done},
        "skipped_clips": {r.name: r.reason for r in results if not r.ok},
    }

