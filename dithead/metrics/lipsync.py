"""Weight-free lip-sync metrics from face-mesh landmarks and the audio track.

SyncNet's LSE needs a checkpoint that cannot be bundled, so without it the
pipeline had no lip-sync number at all. These metrics need only the
mediapipe landmarks the evaluation already tracks and the audio, so they run
everywhere (CI included):

- the *mouth-opening series* of each video (inner-lip gap over the eye-corner
  distance, so any pixel frame or face size gives the same values) and how the
  generated one follows the ground truth's: Pearson r, the frame offset that
  fits best, how much it moves (std ratio) and where it rests (mean, against
  the ground truth's closed-mouth level);
- three THEval metrics (Quignon et al., "THEval: Evaluation Framework for
  Talking Head Video Generation", CVPR 2026; github.com/Newbyl/THEval), each
  raw, on the ground truth (``_gt``) and as THEval's ground-truth-normalised
  score ``1 - |x - GT| / |GT|`` (``_score``, 1 = like the real video).

What was confirmed in THEval's source (Synchronization/lip_sync.py and
silent_lip_stability.py at commit 3603338, Naturalness/lip_dynamics.py at
4be6152, theval/scoring.py) and what is our reading:

- *Lip-Sync* (confirmed): over the speech frames only (silero-vad with its
  default settings), min-max normalise the mouth openness and the audio RMS,
  and average their absolute difference; undefined when speech covers less
  than 10% of the frames or fewer than 2 speech frames have a face. Min-max of
  a constant series is 0 (THEval adds 1e-8 to the range), so a frozen mouth
  during speech scores badly instead of vanishing. Ours differs in two
  details: RMS over one window per video frame (THEval: 50 ms windows
  interpolated to frame times), and the openness is :func:`lip_gap` (THEval:
  the gap of the averaged inner-lip rows over the horizontal distance of the
  eye centres), which min-max normalisation makes equivalent up to the
  per-frame change of the normaliser.
- *Silent Lip Stability* (confirmed): silent frames are frames outside every
  speech segment, in runs of at least 0.3 s; the lip distance is the mean
  vertical gap of 8 inner-lip point pairs over the eye-corner (33-263)
  distance; the value is the median absolute deviation from the mean over
  those frames (not the std), undefined with fewer than 2 such frames. THEval
  measures in frames squashed to 256×256; we use the frame's own pixels.
- *Lip Dynamics* (confirmed, with one deliberate change): all pairwise
  distances between the 40 lip-contour points, their std over time, averaged
  over the pairs, on the first 500 frames. THEval's current code measures the
  distances in 256×256-squashed pixels; an earlier version divided them by the
  eye-corner distance, which we keep so that the value does not depend on how
  large the face is in the frame (the ``_score`` is unaffected when both
  videos show the face at the same size).
- *Normalised score* (confirmed, Eq. 12 / theval/scoring.py). THEval
  normalises the method's mean over a data set by the ground truth's mean; the
  per-clip ``_score`` here is the same formula on one clip, and
  :func:`dithead.metrics.evaluation.summarise` applies it to the means over clips.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dithead.metrics.image import LIP_INDICES

INNER_LIPS = (13, 14)                                   # middle of the upper / lower inner lip
EYE_CORNERS = (33, 263)                                 # outer eye corners: the face-size measure
INNER_UPPER = (191, 80, 81, 82, 13, 312, 311, 310)      # THEval's inner-lip pairs, upper row ...
INNER_LOWER = (95, 88, 178, 87, 14, 317, 402, 318)      # ... and the lower point facing each
VAD_RATE = 16000                                        # silero-vad's model rate
MIN_SPEECH_FRACTION = 0.1                               # THEval Lip-Sync: undefined below this
MIN_SILENCE_SECONDS = 0.3                               # THEval: shorter pauses are not silence
DYNAMICS_FRAMES = 500                                   # THEval Lip Dynamics: first segment only
CLOSED_PERCENTILE = 10                                  # the ground truth's closed-mouth level
MIN_PAIRS = 3                                           # fewer frames make a correlation meaningless

THEVAL = ("theval_lip_sync", "theval_silent_lip_stability", "theval_lip_dynamics")
LIPSYNC_METRICS = (
    "mouth_open_r", "av_offset", "mouth_open_std_ratio", "mouth_open_mean", "mouth_closed_level",
    *(f"{name}{suffix}" for name in THEVAL for suffix in ("", "_gt", "_score")),
    "speech_fraction", "speech_fraction_gt",
)
NAN = float("nan")


# --------------------------------------------------------------------------- landmarks -> series


def _face_size(landmarks: np.ndarray) -> np.ndarray:
    """(N,) eye-corner distance; NaN where no face, so ratios over it are NaN there too."""
    eyes = landmarks[:, EYE_CORNERS].astype(np.float64)
    size = np.linalg.norm(eyes[:, 0] - eyes[:, 1], axis=-1)
    return np.where(size > 1e-6, size, np.nan)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(N,) inner-lip gap (points 13-14) over the eye-corner distance; NaN where no face.

    Dividing by a face-size measure makes the series the same in any pixel
    frame, so a generated video and its ground truth compare at any resolution.
    """
    lips = landmarks[:, INNER_LIPS].astype(np.float64)
    gap = np.linalg.norm(lips[:, 0] - lips[:, 1], axis=-1)
    return gap / _face_size(landmarks)


def lip_gap(landmarks: np.ndarray) -> np.ndarray:
    """(N,) THEval's lip distance: mean vertical gap of 8 inner-lip pairs over the eye-corner distance."""
    upper, lower = landmarks[:, INNER_UPPER, 1].astype(np.float64), landmarks[:, INNER_LOWER, 1].astype(np.float64)
    gaps = np.abs(upper - lower).mean(axis=1)
    return gaps / _face_size(landmarks)


def lip_dynamics(landmarks: np.ndarray, frames: int = DYNAMICS_FRAMES) -> float:
    """THEval Lip Dynamics: std over time of every lip-point distance (face-size units), mean over pairs.

    Rich speech visits many mouth shapes, so every distance varies; a mouth
    that barely moves gives a value near 0. NaN with fewer than 2 faces.
    """
    lips = landmarks[:frames, LIP_INDICES].astype(np.float64)
    first, second = np.triu_indices(len(LIP_INDICES), 1)
    distances = np.linalg.norm(lips[:, first] - lips[:, second], axis=-1) / _face_size(landmarks[:frames])[:, None]
    distances = distances[np.isfinite(distances).all(axis=1)]
    return float(distances.std(axis=0).mean()) if len(distances) >= 2 else NAN


# --------------------------------------------------------------------------- audio -> per-frame


def frame_rms(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) RMS of the samples shown with each video frame; NaN for frames past the audio's end."""
    squares = np.concatenate([[0.0], np.cumsum(np.asarray(samples, np.float64) ** 2)])
    bounds = np.minimum(np.round(np.arange(n_frames + 1) * sample_rate / fps).astype(np.int64), len(samples))
    counts = np.diff(bounds)
    energy = squares[bounds[1:]] - squares[bounds[:-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.sqrt(np.maximum(energy, 0) / counts), np.nan)


@functools.lru_cache(maxsize=1)
def _silero_vad():
    """silero-vad's ``get_speech_timestamps`` and TorchScript model, from its wheel (no download); loaded once.

    Importing silero_vad calls ``torch.set_num_threads(1)`` for the whole process: every torch op
    after the first evaluation (a bench's next sampling run, LPIPS, FID) would then run on one
    core, slower and with other float rounding. The caller's thread count is put back.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        return get_speech_timestamps, load_silero_vad()
    finally:
        torch.set_num_threads(threads)


def speech_frames(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) bool: the frame's time window overlaps a speech segment found by silero-vad.

    A trained voice-activity detector, as THEval uses, rather than an energy
    threshold: breathing, music or noise are loud without being speech.
    """
    import torch
    from scipy.signal import resample_poly

    audio = np.array(samples, np.float32)              # a writable copy: torch.from_numpy shares it
    if sample_rate != VAD_RATE:
        gcd = math.gcd(int(sample_rate), VAD_RATE)
        audio = resample_poly(audio, VAD_RATE // gcd, int(sample_rate) // gcd).astype(np.float32)
    audio = audio[:math.ceil((n_frames + 1) / fps * VAD_RATE)]     # the frames' time, not a longer recording
    speech = np.zeros(n_frames, bool)
    if len(audio) < 512 or not np.any(audio):          # shorter than one VAD window, or digital silence
        return speech
    get_speech_timestamps, model = _silero_vad()
    for segment in get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=VAD_RATE):
        first = int(segment["start"] * fps // VAD_RATE)
        last = math.ceil(segment["end"] * fps / VAD_RATE)
        speech[first:last] = True
    return speech


def silent_frames(speech: np.ndarray, fps: float, min_seconds: float = MIN_SILENCE_SECONDS) -> np.ndarray:
    """(N,) bool: frames outside speech in runs of at least ``min_seconds`` (pauses between words are not silence)."""
    silent = ~np.asarray(speech, bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.view(np.int8), [0]])))
    keep = np.zeros_like(silent)
    for start, stop in zip(edges[::2], edges[1::2]):
        if stop - start >= min_seconds * fps:
            keep[start:stop] = True
    return keep


# --------------------------------------------------------------------------- THEval metrics


def _min_max(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def theval_lip_sync(openness: np.ndarray, rms: np.ndarray, speech: np.ndarray) -> float:
    """THEval Lip-Sync: mean |minmax(openness) - minmax(RMS)| over speech frames with a face (lower = better)."""
    used = np.asarray(speech, bool) & np.isfinite(openness) & np.isfinite(rms)
    if len(speech) == 0 or np.mean(speech) < MIN_SPEECH_FRACTION or used.sum() < 2:
        return NAN
    return float(np.mean(np.abs(_min_max(openness[used]) - _min_max(rms[used]))))


def theval_silent_lip_stability(gap: np.ndarray, silent: np.ndarray) -> float:
    """THEval Silent Lip Stability: median |gap - mean gap| over silent frames with a face (lower = stiller)."""
    values = gap[np.asarray(silent, bool) & np.isfinite(gap)]
    if len(values) < 2:
        return NAN
    return float(np.median(np.abs(values - values.mean())))


def gt_normalised(value: float, gt: float) -> float:
    """THEval's score ``1 - |value - gt| / |gt|``: 1 when the generated video measures like the real one."""
    if not (math.isfinite(value) and math.isfinite(gt)) or gt == 0:
        return NAN
    return 1.0 - abs(value - gt) / abs(gt)


# --------------------------------------------------------------------------- mouth-opening agreement


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the frames where both are finite; NaN with fewer than 3 such frames or no variance."""
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < MIN_PAIRS or _constant(a[both]) or _constant(b[both]):
        return NAN
    x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
    return float(x @ y) / math.sqrt(float(x @ x) * float(y @ y))


def _constant(values: np.ndarray) -> bool:
    """Exactly constant: tested on the range, as a mean subtracted in floating point leaves crumbs of variance."""
    return bool(values.max() == values.min())


def best_offset(generated: np.ndarray, truth: np.ndarray, max_offset: int) -> float:
    """The shift s (|s| <= max_offset) maximising r(generated[k], truth[k - s]): +s = generated lags by s frames.

    Ties go to the smaller shift, so a perfectly periodic mouth reads as in sync.
    """
    n = min(len(generated), len(truth))
    best, best_r = NAN, -math.inf
    for s in sorted(range(-max_offset, max_offset + 1), key=abs):
        r = pearson(generated[max(s, 0):n + min(s, 0)], truth[max(-s, 0):n - max(s, 0)])
        if r > best_r:
            best, best_r = float(s), r
    return best


def sync_scores(generated: np.ndarray, truth: np.ndarray, max_offset: int = 5) -> dict[str, float]:
    """How the generated mouth-opening series follows the ground truth's (frame k of each is the same instant).

    ``mouth_open_r`` (same frames), ``av_offset`` (frames the generated mouth
    lags, 0 = in sync), ``mouth_open_std_ratio`` (moves as much as the real
    one: 1), ``mouth_open_mean`` (where it rests) and ``mouth_closed_level``
    (the ground truth's 10th percentile: a mouth that stays shut sits near
    it). Statistics use the frames where both faces were found; NaN where
    undefined.
    """
    n = min(len(generated), len(truth))
    g, t = np.asarray(generated[:n], np.float64), np.asarray(truth[:n], np.float64)
    both = np.isfinite(g) & np.isfinite(t)
    if both.sum() < MIN_PAIRS:
        return dict.fromkeys(("mouth_open_r", "av_offset", "mouth_open_std_ratio", "mouth_open_mean",
                              "mouth_closed_level"), NAN)
    return {
        "mouth_open_r": pearson(g, t),
        "av_offset": best_offset(g, t, max_offset),
        "mouth_open_std_ratio": NAN if _constant(t[both]) else float(g[both].std() / t[both].std()),
        "mouth_open_mean": float(g[both].mean()),
        "mouth_closed_level": float(np.percentile(t[both], CLOSED_PERCENTILE)),
    }


# --------------------------------------------------------------------------- entry point


def _one_video(landmarks: np.ndarray, speech_audio: np.ndarray | None, sample_rate: int,
               fps: float) -> dict[str, float]:
    """One video's THEval values (the audio-based ones only when it has audio) and its speech fraction."""
    values = {"theval_lip_dynamics": lip_dynamics(landmarks)}
    if speech_audio is None:
        return values
    n = len(landmarks)
    speech = speech_frames(speech_audio, sample_rate, fps, n)
    gap = lip_gap(landmarks)
    values["theval_lip_sync"] = theval_lip_sync(gap, frame_rms(speech_audio, sample_rate, fps, n), speech)
    values["theval_silent_lip_stability"] = theval_silent_lip_stability(gap, silent_frames(speech, fps))
    values["speech_fraction"] = float(speech.mean()) if n else NAN
    return values


def _with_gt(metrics: dict[str, float], generated: dict[str, float], truth: dict[str, float]) -> None:
    """Generated values as they are, ground-truth values as ``<name>_gt``, THEval ones also as ``<name>_score``."""
    metrics.update(generated)
    metrics.update({f"{name}_gt": value for name, value in truth.items()})
    for name in THEVAL:
        if name in generated and name in truth:
            metrics[f"{name}_score"] = gt_normalised(generated[name], truth[name])


def lip_sync_metrics(generated_landmarks: np.ndarray, truth_landmarks: np.ndarray,
                     generated_speech: np.ndarray | None, truth_speech: np.ndarray | None,
                     sample_rate: int, fps: float,
                     max_offset: int = 5) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric of this module for one generated video and its ground truth, over their common frames.

    Landmarks: (N, 468, 2), NaN rows where no face, frame k of both the same
    instant. Speech: mono samples at ``sample_rate`` starting at frame 0, or
    None without an audio track (the audio-based metrics are then absent).
    Returns (metrics, per-frame ``mouth_open`` / ``mouth_open_gt``); values
    that cannot be computed are NaN.
    """
    n = min(len(generated_landmarks), len(truth_landmarks))
    generated, truth = generated_landmarks[:n], truth_landmarks[:n]
    opening, opening_gt = mouth_opening(generated), mouth_opening(truth)
    metrics = sync_scores(opening, opening_gt, max_offset)
    _with_gt(metrics, _one_video(generated, generated_speech, sample_rate, fps),
             _one_video(truth, truth_speech, sample_rate, fps))
    return metrics, {"mouth_open": opening, "mouth_open_gt": opening_gt}


def why_missing(name: str, computed: bool) -> str:
    """Why a metric of this module has no value: absent (a video without audio) or NaN (too little data)."""
    if not computed:
        side = ("the ground truth" if name.endswith("_gt") else
                "one of the videos" if name.endswith("_score") else "the generated video")
        return f"{side} has no audio track"
    if name.startswith("theval_lip_sync"):
        return f"speech (silero-vad) in under {MIN_SPEECH_FRACTION:.0%} of the frames, or under 2 of them with a face"
    if name.startswith("theval_silent"):
        return f"under 2 frames with a face in silences of {MIN_SILENCE_SECONDS:g} s or more"
    if name.startswith("theval_lip_dynamics"):
        return "under 2 frames with a face"
    if name.startswith("speech_fraction"):
        return "no frames"
    return f"under {MIN_PAIRS} frames with a face in both videos, or a mouth that never moves"
