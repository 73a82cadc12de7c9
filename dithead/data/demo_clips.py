"""Bundled demo clips, made deterministically so a fresh clone needs no download.

A real human face (scikit-image's public-domain astronaut photo, Eileen
Collins) whose jaw opens and closes with a synthetic speech-like audio track:
syllables of voiced sound with a loudness envelope, and mouth opening equal to
that envelope. Audio and lips are related, so there is something to learn.
The clips deliberately differ from the pipeline's targets: 30 fps (not 25),
44.1 kHz audio (not 16 kHz), a little head motion.

Two identities: the photo and its mirror image with a different skin tone
and speech; one clip carries its audio in the video, the other as a ``.wav``
beside it (both input forms preprocess accepts).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.special import expit

from dithead.data.audio import write_wav
from dithead.fileio import atomic_path
from dithead.inference import video_writer

FPS = 30
SAMPLE_RATE = 44100
DEMO_PRESET = "veryfast"        # x264 speed preset: the clips are remade by tests, quality at CRF 18 is ample
FRAME_BOX = (60, 0, 380, 320)   # x0, y0, x1, y1 of the photo shown (face ~95 px wide)
# Face landmarks in the cut-out's pixels (from mediapipe's face mesh on the photo).
MOUTH_X = 223.0 - FRAME_BOX[0]
LIP_Y = 146.0 - FRAME_BOX[1]     # between the lips
CHIN_Y = 176.0 - FRAME_BOX[1]


@dataclass
class DemoClip:
    name: str
    seed: int
    mirrored: bool
    audio_beside: bool
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


CLIPS = (
    DemoClip("astronaut", seed=1, mirrored=False, audio_beside=False),
    DemoClip("astronaut_mirrored", seed=2, mirrored=True, audio_beside=True, tint=(0.9, 0.95, 1.1)),
)


def speech_like(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(audio, envelope) at ``sample_rate``: syllables of voiced sound separated by short pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    envelope = np.zeros(n, np.float32)
    t = 0.15
    while t < seconds - 0.3:
        length = rng.uniform(0.12, 0.32)
        a, b = int(t * sample_rate), min(n, int((t + length) * sample_rate))
        envelope[a:b] = rng.uniform(0.5, 1.0) * np.sin(np.linspace(0, np.pi, b - a)) ** 2
        t += length + (rng.uniform(0.35, 0.6) if rng.random() < 0.15 else rng.uniform(0.04, 0.2))
    time = np.arange(n) / sample_rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * time + rng.uniform(0, 6.28))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    # Harmonics weighted by two vowel-like formants (~700 Hz and ~1200 Hz).
    voiced = sum(np.sin(k * phase) * (np.exp(-((k * 130 - 700) / 300) ** 2) + 0.6 * np.exp(-((k * 130 - 1200) / 300) ** 2) + 0.1)
                 for k in range(1, 30))
    noise = rng.standard_normal(n) * 0.02
    audio = envelope * voiced / np.abs(voiced).max() * 0.8 + noise * envelope
    return audio.astype(np.float32), envelope


def mouth_frame(photo: np.ndarray, opening: float, offset: tuple[float, float]) -> np.ndarray:
    """The photo with the jaw lowered by ``opening`` (0..1), a dark mouth between the lips, moved by ``offset``."""
    h, w = photo.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    drop = 11.0 * opening
    # Content below the lips moves down by ``drop``, fading out sideways and below the chin.
    weight = np.exp(-((xs - MOUTH_X) / 34) ** 2) * expit((ys - LIP_Y) / 1.5) * expit((CHIN_Y + 12 - ys) / 5)
    frame = cv2.remap(photo, xs, ys - drop * weight, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if drop > 0.5:
        inner = np.zeros((h, w), np.float32)
        centre = (int(MOUTH_X * 16), int((LIP_Y + drop / 2) * 16))
        axes = (int((14 + 6 * opening) * 16), int(drop / 2 * 16))
        cv2.ellipse(inner, centre, axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
        inner = cv2.GaussianBlur(inner, (5, 5), 1.0)[..., None]
        frame = (frame * (1 - inner) + np.array([60, 20, 25], np.float32) * inner).astype(np.uint8)
    shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
    return cv2.warpAffine(frame, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def clip_frames(clip: DemoClip, envelope: np.ndarray, n_frames: int, fps: float = FPS,
                sample_rate: int = SAMPLE_RATE):
    """RGB frames of ``clip`` whose mouth opening follows ``envelope`` (at ``sample_rate``)."""
    import skimage.data

    x0, y0, x1, y1 = FRAME_BOX
    photo = skimage.data.astronaut()[y0:y1, x0:x1].astype(np.float32) * np.float32(clip.tint)
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    for k in range(n_frames):
        opening = float(envelope[min(len(envelope) - 1, int((k + 0.5) / fps * sample_rate))])
        offset = (3 * np.sin(2 * np.pi * k / (2.3 * fps)), 2 * np.sin(2 * np.pi * k / (1.5 * fps)))
        frame = mouth_frame(photo, opening, offset)
        yield np.ascontiguousarray(frame[:, ::-1]) if clip.mirrored else frame


def render_clip(clip: DemoClip, out_dir: str | os.PathLike, seconds: float = 4.0) -> Path:
    """Write ``<out_dir>/<name>.mp4`` (+ ``.wav`` beside it when ``audio_beside``); returns the video path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    audio, envelope = speech_like(seconds, clip.seed)
    frames = clip_frames(clip, envelope, int(seconds * FPS))
    video = out_dir / f"{clip.name}.mp4"
    with atomic_path(video) as tmp:
        write_video(tmp, frames, FPS, None if clip.audio_beside else audio, SAMPLE_RATE)
    if clip.audio_beside:
        with atomic_path(video.with_suffix(".wav")) as tmp:
            write_wav(tmp, audio, SAMPLE_RATE)
    return video


def write_video(path: str | os.PathLike, frames, fps: float, audio: np.ndarray | None = None,
                sample_rate: int = SAMPLE_RATE) -> None:
    """Encode RGB ``frames`` (an iterable, streamed) as H.264 yuv420p, with mono AAC ``audio`` if given.

    ``audio``: float32 samples at ``sample_rate``. The encoder reads audio
    from a file, so the samples go through a temporary float WAV (lossless).
    """
    if audio is None:
        video_writer.write_video(path, frames, fps, preset=DEMO_PRESET)
        return
    with tempfile.TemporaryDirectory() as work:
        wav = Path(work) / "audio.wav"
        write_wav(wav, np.asarray(audio, np.float32), sample_rate)
        video_writer.write_video(path, frames, fps, preset=DEMO_PRESET, audio=wav)


def make_demo_data(out_dir: str | os.PathLike, seconds: float = 4.0) -> list[Path]:
    """Write every demo clip into ``out_dir``; returns the video paths."""
    return [render_clip(clip, out_dir, seconds) for clip in CLIPS]
