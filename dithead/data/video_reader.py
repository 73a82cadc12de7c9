"""Streaming video decode at a target frame rate.

PyAV (FFmpeg) decodes on demand: frames are yielded one at a time, so memory
does not grow with clip length.
Resampling to the target fps picks, for each output instant k / fps, the
source frame whose timestamp is nearest (constant or variable frame rate).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dithead.fileio import InputFileError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv"}


class VideoError(InputFileError):
    """A video that cannot be used; the message names the file and the problem."""


@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float            # average frame rate of the source
    n_frames: int         # source frames (estimate from the container)
    duration: float       # seconds
    codec: str
    has_audio: bool


@dataclass
class Frame:
    index: int            # output frame index at the target fps
    source_index: int     # decoded source frame shown at that instant
    image: np.ndarray     # (H, W, 3) uint8 RGB


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Container facts, with a clear error for missing, unreadable or audio-only files."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            duration = _duration(container, stream)
            n_frames = stream.frames or (int(round(duration * fps)) if fps else 0)
            return VideoInfo(str(path), stream.codec_context.width, stream.codec_context.height,
                             fps, n_frames, duration, stream.codec_context.name, bool(container.streams.audio))
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises many error types for damaged files
        raise VideoError(path, f"cannot be opened as a video ({type(exc).__name__}: {exc})") from None


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base
    return 0.0


def iter_source_frames(path: str | os.PathLike, threads: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """(source index, timestamp in seconds, RGB frame) for every decoded frame, upright.

    PyAV decodes a frame only when the caller asks for the next one, so memory
    holds what the caller keeps. (decord's reader decodes ahead in a background
    thread with no bound: with a consumer slower than the decoder, as the
    sampler is, 600 frames of 1080x1920 HEVC took 2.3 GB, against 0.13 GB
    here; bench/generate.py measures `dithead generate`.) ``threads``: the decoder's threads; 1 by
    default because clips are decoded in parallel by workers, beside
    mediapipe's and torch's own threads; 0 lets FFmpeg choose.
    """
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise VideoError(path, f"cannot be opened as a video ({type(exc).__name__}: {exc})") from None
    with container:
        if not container.streams.video:
            raise VideoError(path, "has no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        stream.thread_type = "AUTO"
        fallback_step = 1.0 / float(stream.average_rate or 25)
        last_time = -fallback_step
        i = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else last_time + fallback_step
                last_time = t
                yield i, float(t), _upright(frame)
                i += 1
        except av.error.FFmpegError as exc:
            if i == 0:
                raise VideoError(path, f"no frame could be decoded ({exc})") from None
            # A truncated file: keep the frames decoded so far.


def _upright(frame) -> np.ndarray:
    """RGB array of a PyAV frame, turned by the stream's display rotation (phone videos)."""
    image = frame.to_ndarray(format="rgb24")
    quarter_turns = int(round(frame.rotation / 90)) % 4 if frame.rotation else 0
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def iter_frames(path: str | os.PathLike, fps: float = 25.0, threads: int = 1) -> Iterator[Frame]:
    """Frames resampled to ``fps``: output frame k shows the source frame nearest to k / fps.

    Needs one frame of look-ahead, so memory stays at two decoded frames.
    """
    source = iter_source_frames(path, threads)
    try:
        prev_i, prev_t, prev_img = next(source)
    except StopIteration:
        raise VideoError(path, "contains no decodable frames") from None
    t0 = prev_t  # streams may start at a non-zero timestamp
    prev_t -= t0
    k = 0
    step = None
    for i, t, img in source:
        t -= t0
        step = t - prev_t if t > prev_t else step
        boundary = (prev_t + t) / 2
        while k / fps < boundary:
            yield Frame(k, prev_i, prev_img)
            k += 1
        prev_i, prev_t, prev_img = i, t, img
    end = prev_t + (step or 1.0 / fps)
    # The last source frame lasts one frame period; count output frames by duration.
    n_total = max(k + 1, int(math.floor(end * fps + 0.5)))
    while k < n_total:
        yield Frame(k, prev_i, prev_img)
        k += 1


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")
