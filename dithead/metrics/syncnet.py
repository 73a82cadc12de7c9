"""LSE-D and LSE-C lip-sync scores with SyncNet v2, as in the Wav2Lip evaluation.

Wav2Lip's ``evaluation/scores_LSE`` runs syncnet_python (Chung & Zisserman,
2016) on a 25 fps face-crop video and its 16 kHz audio; this module follows
that code step by step:

- video: 224×224 face crops (syncnet_python's ``crop_video``: a square from
  one half box side above the face centre to 1.8 below, BGR, 0..255); windows
  of 5 consecutive frames, one per start frame;
- audio: 13 MFCCs every 10 ms (python_speech_features' defaults on int16
  samples), windows of 20 MFCC frames (0.2 s) starting at 4 × the video frame;
- distances between every video embedding and the audio embeddings offset by
  -15..+15 frames, averaged over the video: LSE-D is the smallest mean
  distance, LSE-C the median mean distance minus that minimum.

The network (``S`` in syncnet_python's ``SyncNetModel.py``) is written here
with the same parameter names, so ``syncnet_v2.model`` (a plain state dict)
loads unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct
from torch import nn

from dithead.metrics.weights import StateSource, describe_source, load_into, load_state_dict

WEIGHTS_KEY = "weights.syncnet"
WEIGHTS_FILE = "syncnet_python's SyncNet v2 weights syncnet_v2.model"
FPS = 25
SAMPLE_RATE = 16000
CROP_SIZE = 224
WINDOW_FRAMES = 5
MFCC_PER_FRAME = 4           # 100 MFCC frames per second / 25 video frames per second
MFCC_WINDOW = 20
CROP_SCALE = 0.4             # syncnet_python run_pipeline's --crop_scale
PAD_VALUE = 110              # grey that syncnet_python pads frames with before cropping
DEFAULT_VSHIFT = 15


class SyncNetV2(nn.Module):
    """syncnet_python's ``S``: audio (B, 1, 13, 20) and lips (B, 3, 5, 224, 224) -> (B, 1024) embeddings."""

    def __init__(self, embedding_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = _embedding_head(embedding_dim)
        self.netfclip = _embedding_head(embedding_dim)
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))


def _embedding_head(embedding_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim))


def load_syncnet(source: StateSource) -> SyncNetV2:
    """SyncNet v2 with the checkpoint at ``source`` loaded, in evaluation mode.

    Raises ``MissingWeightsError`` (naming ``weights.syncnet``) when the path
    is empty or does not exist.
    """
    state = load_state_dict(source, WEIGHTS_KEY, WEIGHTS_FILE)
    net = SyncNetV2()
    load_into(net, state, describe_source(source, WEIGHTS_KEY))
    return net.eval().requires_grad_(False)


def random_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised state dict in syncnet_v2.model's layout (no BatchNorm counters)."""
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        state = {k: v for k, v in SyncNetV2().state_dict().items() if not k.endswith("num_batches_tracked")}
    finally:
        torch.random.set_rng_state(torch_state)
    return state


# --------------------------------------------------------------------------- audio


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE, winlen: float = 0.025, winstep: float = 0.01,
         numcep: int = 13, nfilt: int = 26, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """(frames, numcep) MFCCs, equal to ``python_speech_features.mfcc`` 0.6 with its defaults.

    That package computes: pre-emphasis, 25 ms rectangular frames every 10 ms
    (the last one zero-padded), power spectrum with an FFT of the next power
    of two, 26 triangular mel filters, log, orthonormal DCT-II, sinusoidal
    liftering, and the log frame energy in place of the first coefficient.
    """
    signal = np.asarray(signal, dtype=np.float64)
    frame_len, frame_step = _round_half_up(winlen * sample_rate), _round_half_up(winstep * sample_rate)
    nfft = 1 << max(frame_len - 1, 0).bit_length()
    emphasised = np.append(signal[0], signal[1:] - preemph * signal[:-1])
    n_frames = 1 if len(signal) <= frame_len else 1 + math.ceil((len(signal) - frame_len) / frame_step)
    padded = np.concatenate([emphasised, np.zeros((n_frames - 1) * frame_step + frame_len - len(signal))])
    starts = np.arange(n_frames)[:, None] * frame_step
    frames = padded[starts + np.arange(frame_len)[None, :]]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    bands = power @ mel_filterbank(nfilt, nfft, sample_rate).T
    bands = np.where(bands == 0, eps, bands)
    cepstra = dct(np.log(bands), type=2, axis=1, norm="ortho")[:, :numcep]
    cepstra *= 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    cepstra[:, 0] = np.log(energy)
    return cepstra


def mel_filterbank(nfilt: int, nfft: int, sample_rate: int) -> np.ndarray:
    """python_speech_features' triangular filters (FFT bins from floored mel points), (nfilt, nfft//2+1)."""
    high_mel = 2595 * np.log10(1 + (sample_rate / 2) / 700.0)
    mel_points = np.linspace(0.0, high_mel, nfilt + 2)
    bins = np.floor((nfft + 1) * (700 * (10 ** (mel_points / 2595.0) - 1)) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def audio_mfcc(samples: np.ndarray) -> np.ndarray:
    """MFCCs (frames, 13) of 16 kHz float audio in [-1, 1], on the int16 scale syncnet_python reads.

    syncnet_python decodes its audio to 16-bit PCM; the log energies (the
    first coefficient) depend on that scale, so the samples are quantised to
    int16 the same way.
    """
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32768.0), -32768, 32767)
    return mfcc(pcm, SAMPLE_RATE)


# --------------------------------------------------------------------------- video


def syncnet_crop(frame: np.ndarray, face_box: np.ndarray) -> np.ndarray:
    """syncnet_python's 224×224 crop of an RGB frame, returned as BGR uint8 (what its network was fed).

    ``face_box``: [cx, cy, side] of the face in frame pixels. As in its
    ``crop_video``: half-side ``bs``, rows ``cy - bs .. cy + bs (1 + 2 cs)``,
    columns ``cx ± bs (1 + cs)`` (truncated to integers in the coordinates of
    the frame padded by ``bs (1 + 2 cs)``, as there), grey outside the frame,
    bilinear resize.
    """
    cx, cy, side = (float(v) for v in face_box)
    bs = side / 2
    pad = int(bs * (1 + 2 * CROP_SCALE))
    my, mx = cy + pad, cx + pad
    rows = (int(my - bs) - pad, int(my + bs * (1 + 2 * CROP_SCALE)) - pad)
    cols = (int(mx - bs * (1 + CROP_SCALE)) - pad, int(mx + bs * (1 + CROP_SCALE)) - pad)
    face = _cut_filled(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), rows, cols, PAD_VALUE)
    return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def _cut_filled(image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], fill: int) -> np.ndarray:
    """``image[rows, cols]`` with ``fill`` wherever the window leaves the image (at least 1×1)."""
    h, w = image.shape[:2]
    (y0, y1), (x0, x1) = rows, cols
    y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)
    out = np.full((y1 - y0, x1 - x0, image.shape[2]), fill, image.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


# --------------------------------------------------------------------------- scores


@dataclass
class SyncScores:
    lse_d: float           # smallest mean embedding distance over offsets (lower = better sync)
    lse_c: float           # median minus smallest mean distance (higher = more confident sync)
    offset: int            # audio-video offset in frames at the minimum (syncnet_python's sign)
    windows: int           # 5-frame windows scored
    mean_distances: np.ndarray  # (2 * vshift + 1,) mean distance per offset, -vshift..+vshift


class SyncNetScorer:
    """Embeds lip windows as frames stream in; scores them against the audio at the end.

    ``add_frame(bgr_crop)`` takes 224×224 BGR crops in order (see
    :func:`syncnet_crop`); ``scores(audio)`` returns :class:`SyncScores`.
    Memory: one batch of windows plus a 1024-d embedding per frame.
    """

    def __init__(self, net: SyncNetV2, device: str | torch.device = "cpu", batch_size: int = 16,
                 vshift: int = DEFAULT_VSHIFT):
        self.net = net.to(device)
        self.device = device
        self.batch_size = batch_size
        self.vshift = vshift
        self._frames: list[np.ndarray] = []     # the last frames, enough to finish a batch of windows
        self._lip: list[torch.Tensor] = []
        self._n_frames = 0

    def add_frame(self, bgr_crop: np.ndarray) -> None:
        self._frames.append(bgr_crop)
        self._n_frames += 1
        if len(self._frames) >= self.batch_size + WINDOW_FRAMES - 1:
            self._embed_windows(self.batch_size)

    @torch.no_grad()
    def _embed_windows(self, count: int) -> None:
        clip = torch.from_numpy(np.stack(self._frames[:count + WINDOW_FRAMES - 1])).to(self.device).float()
        clip = clip.permute(3, 0, 1, 2)                      # C, T, H, W
        windows = torch.stack([clip[:, i:i + WINDOW_FRAMES] for i in range(count)])
        self._lip.append(self.net.forward_lip(windows).cpu())
        del self._frames[:count]

    @torch.no_grad()
    def scores(self, audio: np.ndarray) -> SyncScores:
        """Scores against 16 kHz float audio whose sample 0 is the instant of frame 0."""
        if len(self._frames) >= WINDOW_FRAMES:
            self._embed_windows(len(self._frames) - WINDOW_FRAMES + 1)
        cepstra = audio_mfcc(audio).T                        # 13, T_mfcc
        # As syncnet_python: windows start at frames 0 .. min_length - 6.
        min_length = min(self._n_frames, len(audio) // (SAMPLE_RATE // FPS))
        n_windows = min_length - WINDOW_FRAMES
        if n_windows < 1:
            raise ValueError(f"LSE needs at least {WINDOW_FRAMES + 1} frames with audio, got {min_length}")
        lip = torch.cat(self._lip)[:n_windows]
        aud = []
        cct = torch.from_numpy(cepstra).float()[None, None]
        for start in range(0, n_windows, self.batch_size):
            batch = [cct[..., v * MFCC_PER_FRAME: v * MFCC_PER_FRAME + MFCC_WINDOW]
                     for v in range(start, min(n_windows, start + self.batch_size))]
            aud.append(self.net.forward_aud(torch.cat(batch).to(self.device)).cpu())
        return sync_scores(lip, torch.cat(aud), self.vshift)


def sync_scores(lip: torch.Tensor, aud: torch.Tensor, vshift: int = DEFAULT_VSHIFT) -> SyncScores:
    """syncnet_python's ``calc_pdist`` + offset search on (N, D) video and audio embeddings.

    Audio embeddings are zero-padded by ``vshift`` rows at both ends, as there,
    so offsets past the ends compare against a zero vector.
    """
    window = 2 * vshift + 1
    padded = F.pad(aud, (0, 0, vshift, vshift))
    dists = torch.stack([F.pairwise_distance(lip[[i]].repeat(window, 1), padded[i:i + window])
                         for i in range(len(lip))], 1)
    mean_distances = dists.mean(dim=1)
    minval, minidx = torch.min(mean_distances, 0)
    confidence = torch.median(mean_distances) - minval
    return SyncScores(lse_d=float(minval), lse_c=float(confidence), offset=int(vshift - minidx),
                      windows=len(lip), mean_distances=mean_distances.numpy())
