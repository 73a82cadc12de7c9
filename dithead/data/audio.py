"""Audio for one clip: mono, 16 kHz, float32 in [-1, 1], as long as the video.

The audio comes from a ``.wav`` beside the video when there is one (the
speech a user wants), else from the video's own track (decoded with PyAV).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from dithead.fileio import InputFileError


class AudioError(InputFileError):
    """Audio that cannot be used; the message names the file and the problem."""


class NoAudioStream(AudioError):
    """The file has no audio stream."""


@dataclass
class Audio:
    samples: np.ndarray     # (T,) float32 in [-1, 1]
    sample_rate: int
    source: str             # file the audio was read from
    source_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, peak_normalise: bool = True) -> Audio:
    """Any audio file or video with an audio track -> mono ``sample_rate`` float32.

    Peak-normalised to [-1, 1] by default (paper 3.1); ``peak_normalise=False``
    keeps the recorded level (SyncNet's features depend on it).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    samples, rate, channels = _read_soundfile(path)
    if samples is None:
        samples, rate, channels = _read_pyav(path)
    if samples.size == 0:
        raise AudioError(path, "audio stream is empty")
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    samples = resample(mono, rate, sample_rate)
    return Audio(normalise(samples) if peak_normalise else samples, sample_rate, str(path), rate, channels)


def _read_soundfile(path: Path):
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # not a format libsndfile reads (e.g. a video): PyAV takes over
        return None, 0, 0
    return data, int(rate), data.shape[1]


def _read_pyav(path: Path):
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise AudioError(path, f"cannot be opened ({type(exc).__name__}: {exc})") from None
    with container:
        if not container.streams.audio:
            raise NoAudioStream(path, "has no audio stream (put a .wav of the same name beside the video)")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        rate = stream.codec_context.sample_rate
        # Resampler to packed float keeps every decoded frame as (1, T*C).
        resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [out.to_ndarray().reshape(-1, channels) for out in resampler.resample(frame)]
        except av.error.FFmpegError as exc:
            if not chunks:
                raise AudioError(path, f"audio could not be decoded ({exc})") from None
            # A truncated file: keep the audio decoded so far.
        chunks += [out.to_ndarray().reshape(-1, channels) for out in resampler.resample(None)]
    data = np.concatenate(chunks) if chunks else np.zeros((0, channels), np.float32)
    return data.astype(np.float32), int(rate), int(channels)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact for rational rate ratios."""
    if rate == target:
        return samples.astype(np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def normalise(samples: np.ndarray) -> np.ndarray:
    """Scale to peak 1 (paper 3.1: audio normalised to [-1, 1]); silence stays zero."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return (samples / peak).astype(np.float32) if peak > 0 else samples.astype(np.float32)


def align_to_frames(samples: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> tuple[np.ndarray, int]:
    """Pad with silence or trim so the audio lasts exactly ``n_frames / fps`` seconds.

    Returns the aligned samples and the change in samples (+ padded, - trimmed).
    """
    target = int(round(n_frames * sample_rate / fps))
    change = target - len(samples)
    if change > 0:
        samples = np.concatenate([samples, np.zeros(change, dtype=samples.dtype)])
    return samples[:target], change


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    sf.write(str(path), samples.astype(np.float32), sample_rate, subtype="FLOAT", format="WAV")

