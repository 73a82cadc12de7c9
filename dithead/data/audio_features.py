"""Per-frame audio features aligned to video frames, and the 11-frame windows.

Two encoders:
- ``wav2vec2``: a transformers ``Wav2Vec2ForCTC`` (the paper uses
  jonatasgrosman/wav2vec2-large-xlsr-53-english). By default its CTC logits
  (33 per 20 ms step: 11 frames x 33 = the paper's 363 values per window), or a
  hidden layer. Long audio is run in chunks with context on both sides, so
  memory is bounded and chunk borders do not show.
- ``mel``: log-mel frames, weight-free; the smoke profile uses it.

Both produce features at 50 Hz (20 ms hop, wav2vec2's rate), which are then
averaged into video frames: frame k gets the rows whose centres fall in
[k / fps, (k + 1) / fps).

This module is the only place that knows the encoders: the
extract_audio_features stage, the sample stage and ``dithead generate`` load
one with ``load_encoder`` and run it through ``frame_features`` or
``audio_feature_extractor``. A new encoder is a new name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

FEATURE_RATE = 50           # rows per second for both encoders (wav2vec2's 320-sample stride at 16 kHz)
WAV2VEC2_STRIDE = 320       # samples per wav2vec2 output step at 16 kHz
WAV2VEC2_FIELD = 400        # receptive field of the first output step


class FeatureModelError(RuntimeError):
    """The configured audio model cannot be loaded; says which param to set."""


@dataclass
class AudioFeatureSettings:
    """The ``audio_features:`` params (same names and defaults as params.yaml)."""

    encoder: str = "wav2vec2"           # wav2vec2 (the paper) or mel (weight-free)
    model: str = "jonatasgrosman/wav2vec2-large-xlsr-53-english"
    output: str = "logits"              # wav2vec2: logits (CTC) or hidden (a hidden layer)
    layer: int = -1                     # wav2vec2: the hidden layer when output is hidden
    n_mels: int = 80                    # mel only
    chunk_seconds: float = 20           # wav2vec2 runs on chunks this long


def load_encoder(settings: AudioFeatureSettings, device: str = "cpu"):
    """The network ``settings.encoder`` runs (``None`` for the weight-free ``mel``)."""
    return load_wav2vec2(settings.model, device) if settings.encoder == "wav2vec2" else None


def audio_feature_extractor(settings: AudioFeatureSettings, fps: float = 25.0, sample_rate: int = 16000,
                            device: str = "cpu") -> Callable[[np.ndarray, int], np.ndarray]:
    """``f(samples, n_frames) -> (n_frames, D)`` with the encoder the DiT was trained on (params ``audio_features``)."""
    net = load_encoder(settings, device)

    def extract(samples: np.ndarray, n_frames: int) -> np.ndarray:
        return settings_features(samples, sample_rate, n_frames, fps, settings, net=net, device=device)

    return extract


def settings_features(samples: np.ndarray, sample_rate: int, n_frames: int, fps: float,
                      settings: AudioFeatureSettings, net=None, device: str = "cpu") -> np.ndarray:
    """``frame_features`` with the encoder and options of ``settings`` (``net`` from ``load_encoder``)."""
    return frame_features(samples, sample_rate, n_frames, fps, settings.encoder, n_mels=settings.n_mels, net=net,
                          output=settings.output, layer=settings.layer, chunk_seconds=settings.chunk_seconds,
                          device=device)


def audio_windows(features: np.ndarray, indices, size: int = 11) -> np.ndarray:
    """(len(indices), size, D): frames k - size//2 .. k + size//2 around each k, edge-padded."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    half = size // 2
    offsets = np.arange(-half, size - half)
    rows = np.clip(indices[:, None] + offsets[None, :], 0, len(features) - 1)
    return np.asarray(features)[rows]


def pool_to_frames(rows: np.ndarray, row_rate: float, n_frames: int, fps: float) -> np.ndarray:
    """Average feature rows into video frames; a frame with no row takes the nearest row."""
    rows = np.asarray(rows, dtype=np.float32)
    centres = (np.arange(len(rows)) + 0.5) / row_rate
    frame_of_row = np.clip(np.floor(centres * fps).astype(np.int64), 0, n_frames - 1)
    sums = np.zeros((n_frames, rows.shape[1]), dtype=np.float64)
    counts = np.zeros(n_frames, dtype=np.int64)
    np.add.at(sums, frame_of_row, rows)
    np.add.at(counts, frame_of_row, 1)
    empty = counts == 0
    out = sums / np.maximum(counts, 1)[:, None]
    if empty.any():
        frame_centres = (np.nonzero(empty)[0] + 0.5) / fps
        nearest = np.clip(np.rint(frame_centres * row_rate - 0.5).astype(np.int64), 0, len(rows) - 1)
        out[empty] = rows[nearest]
    return out.astype(np.float32)


# --- mel ---------------------------------------------------------------------------------

def mel_rows(samples: np.ndarray, sample_rate: int, n_mels: int = 80) -> np.ndarray:
    """(T, n_mels) log-mel spectrogram at 50 Hz: 25 ms Hann window, 20 ms hop."""
    import torch
    from transformers.audio_utils import mel_filter_bank

    hop = sample_rate // FEATURE_RATE
    win = int(round(0.025 * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    wave = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=True, return_complex=True).abs().pow(2)       # (n_fft//2+1, T)
    filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=20.0,
                              max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney",
                              mel_scale="slaney")                            # (freq, n_mels)
    mel = torch.from_numpy(filters.astype(np.float32)).T @ spec
    return torch.log(mel.clamp_min(1e-10)).T.numpy()


# --- wav2vec2 ----------------------------------------------------------------------------

def load_wav2vec2(model: str, device: str = "cpu"):
    """A ``Wav2Vec2ForCTC`` from a local directory or a hub id already in the local cache."""
    from transformers import Wav2Vec2ForCTC

    if not model:
        raise FeatureModelError("audio_features.model is empty: set it to a wav2vec2 directory or hub id, "
                                "or set audio_features.encoder: mel")
    local = Path(model).expanduser()
    try:
        if local.exists():
            net = Wav2Vec2ForCTC.from_pretrained(str(local))
        else:
            net = Wav2Vec2ForCTC.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FeatureModelError(
            f"cannot load wav2vec2 model '{model}' (audio_features.model): {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}. Download it on a machine with network access "
            f"(`huggingface-cli download {model} --local-dir DIR`) and set audio_features.model: DIR, "
            "or set audio_features.encoder: mel") from None
    return net.eval().to(device)


def wav2vec2_rows(samples: np.ndarray, net, output: str = "logits", layer: int = -1,
                  chunk_seconds: float = 20.0, context_seconds: float = 1.0, sample_rate: int = 16000,
                  device: str = "cpu") -> np.ndarray:
    """(T, D) wav2vec2 outputs at 50 Hz for 16 kHz audio, computed chunk by chunk.

    ``output``: "logits" (CTC logits) or "hidden" (hidden state ``layer``).
    Each chunk is run with ``context_seconds`` of audio on both sides, and only
    the rows of its own span are kept, so results do not depend on the chunking
    beyond that context.
    """
    import torch

    if output not in ("logits", "hidden"):
        raise ValueError(f"audio_features.output must be 'logits' or 'hidden', not {output!r}")
    samples = np.asarray(samples, dtype=np.float32)
    # Zero-mean, unit-variance input, as Wav2Vec2FeatureExtractor does for these
    # models; computed over the whole clip so every chunk is scaled alike.
    samples = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    n_rows = max(1, (len(samples) - WAV2VEC2_FIELD) // WAV2VEC2_STRIDE + 1)
    chunk = max(1, int(chunk_seconds * FEATURE_RATE))            # rows per chunk
    context = int(context_seconds * FEATURE_RATE)
    pieces = []
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        lo = max(0, start - context)
        hi = min(n_rows, stop + context)
        wave = samples[lo * WAV2VEC2_STRIDE: (hi - 1) * WAV2VEC2_STRIDE + WAV2VEC2_FIELD]
        with torch.inference_mode():
            out = net(torch.from_numpy(wave)[None].to(device), output_hidden_states=output == "hidden")
        rows = out.logits[0] if output == "logits" else out.hidden_states[layer][0]
        pieces.append(rows[start - lo: stop - lo].float().cpu().numpy())
    return np.concatenate(pieces)


def frame_features(samples: np.ndarray, sample_rate: int, n_frames: int, fps: float, encoder: str = "mel",
                   n_mels: int = 80, net=None, output: str = "logits", layer: int = -1,
                   chunk_seconds: float = 20.0, device: str = "cpu") -> np.ndarray:
    """(n_frames, D) features for 16 kHz audio that lasts ``n_frames / fps`` seconds."""
    if encoder == "mel":
        rows = mel_rows(samples, sample_rate, n_mels)
    elif encoder == "wav2vec2":
        if net is None:
            raise ValueError("encoder 'wav2vec2' needs the network (load_wav2vec2)")
        rows = wav2vec2_rows(samples, net, output, layer, chunk_seconds, sample_rate=sample_rate, device=device)
    else:
        raise ValueError(f"audio_features.encoder must be 'mel' or 'wav2vec2', not {encoder!r}")
    return pool_to_frames(rows, FEATURE_RATE, n_frames, fps)

