"""Every metric on a pair of videos: a generated one against its ground truth.

Paper 4.1: metrics on padded face crops at 25 fps. The two videos are
resampled to the same frame rate and compared frame by frame over the time
they overlap (both start at 0 s). Faces are tracked with the project's
mediapipe tracker; the crop boxes are smoothed over time and, when both
videos show the same framing (same aspect ratio, any resolution), the ground
truth's boxes cut both videos so that a mouth drawn in the wrong place
counts. Videos framed differently (e.g. a method that outputs only a face)
are each cut at their own face.

Two passes over the videos keep memory flat: the first tracks the faces,
the second crops and scores.

Metrics (names as reported):

- ``psnr``, ``ssim``: whole crop, mean over frames;
- ``mouth_psnr``, ``mouth_ssim``: a square around the ground truth's lips;
- ``lmd``: lip landmark distance in crop pixels (frames with both faces);
- ``lpips``: AlexNet LPIPS; ``fid``: FID of the generated crops against the
  ground-truth crops; ``lse_d``, ``lse_c``: SyncNet on the generated video and
  its audio. These three need pretrained weights; without them the metric
  is listed under ``missing`` with the reason and the key to set;
- weight-free lip sync from the landmarks of pass 1 and both audio tracks
  (:mod:`dithead.metrics.lipsync`): ``mouth_open_r``, ``av_offset``,
  ``mouth_open_std_ratio``, ``mouth_open_mean``, ``mouth_closed_level`` and
  THEval's ``theval_lip_sync``, ``theval_silent_lip_stability``,
  ``theval_lip_dynamics`` (each also ``_gt`` and ``_score``). Always
  computed; a value the clip does not allow (e.g. no silence) is left out and
  the reason given in ``notes["lipsync"]``.

The ground truth may start later than the generated video (``gt_start``
frames): a clip split in time, whose second part was generated, is compared
with that part.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dithead.data.audio import AudioError, NoAudioStream, load_audio
from dithead.data.face import FaceTracker, crop_box, landmark_box, nearest_valid, square_box, to_crop_coords
from dithead.data.video_reader import VideoError, iter_frames, probe_video
from dithead.fileio import InputFileError
from dithead.metrics import image as image_metrics
from dithead.metrics.landmarks import frame_lmd
from dithead.metrics.lipsync import LIPSYNC_METRICS, THEVAL, gt_normalised, lip_sync_metrics, why_missing
from dithead.metrics.weights import MissingWeightsError, WeightPaths, WeightsFormatError, weight_paths

METRICS = ("psnr", "ssim", "lpips", "fid", "lse_c", "lse_d", "lmd", "mouth_psnr", "mouth_ssim")
SYNC_METRICS = ("lse_c", "lse_d")
BOX_MODES = ("auto", "shared", "own")
REPORTED = (*METRICS, *LIPSYNC_METRICS)
SPEECH_RATE = 16000
VARIANTS = ("generated", "reference_copy", "mismatched_audio", "silence")


class EvaluationError(InputFileError):
    """A pair of videos that cannot be evaluated; the message names the file and the problem."""


@dataclass
class EvalConfig:
    metrics: Sequence[str] = METRICS
    fps: float = 25.0              # paper 4.1: evaluated at 25 fps, before interpolation
    crop_size: int = 256           # side of the face crop the metrics see
    crop_margin: float = 0.6       # crop side = landmark-box side * (1 + margin): the padded face crop
    smooth_frames: int = 9         # centred moving average over the crop box (frames)
    mouth_margin: float = 0.4      # mouth square = lip-box side * (1 + margin)
    max_frames: int = 0            # compare at most this many frames (0: the whole overlap)
    psnr_cap: float = 100.0        # dB given to identical frames, so that means stay finite
    boxes: str = "auto"            # auto | shared (ground truth's boxes for both) | own (each video's own)
    batch_size: int = 16
    device: str = "cpu"
    syncnet_vshift: int = 15       # offsets searched, in frames each way (Wav2Lip's evaluation: 15)
    detection_confidence: float = 0.5
    tracking_confidence: float = 0.5
    lipsync_max_offset: int = 5    # mouth-opening offsets searched for av_offset, frames each way

    def __post_init__(self):
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
        if self.boxes not in BOX_MODES:
            raise ValueError(f"boxes must be one of {BOX_MODES}, got {self.boxes!r}")


# --------------------------------------------------------------------------- pretrained networks


@dataclass
class Networks:
    """The pretrained networks the requested metrics need, and why any could not be loaded."""

    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    syncnet: torch.nn.Module | None = None
    missing: dict[str, str] = field(default_factory=dict)   # metric -> reason

    @classmethod
    def load(cls, weights: WeightPaths | Mapping[str, str], metrics: Sequence[str], device: str = "cpu") -> "Networks":
        """``weights``: the ``weights:`` params (``WeightPaths``, or the section as a mapping)."""
        from dithead.models.lpips import LPIPS
        from dithead.metrics.fid import load_fid_inception
        from dithead.metrics.syncnet import load_syncnet

        weights = weight_paths(weights)
        nets = cls()
        if "lpips" in metrics:
            nets.lpips = nets._try(("lpips",), lambda: LPIPS(weights.lpips_backbone, weights.lpips_linear))
        if "fid" in metrics:
            nets.inception = nets._try(("fid",), lambda: load_fid_inception(weights.inception_fid))
        sync = tuple(m for m in SYNC_METRICS if m in metrics)
        if sync:
            nets.syncnet = nets._try(sync, lambda: load_syncnet(weights.syncnet))
        for net in (nets.lpips, nets.inception, nets.syncnet):
            if net is not None:
                net.to(device)
        return nets

    def _try(self, metrics: Sequence[str], load):
        try:
            return load()
        except (MissingWeightsError, WeightsFormatError) as exc:
            for metric in metrics:
                self.missing[metric] = f"not computed: {exc}"
            return None


# --------------------------------------------------------------------------- pass 1: faces


@dataclass
class FaceTrack:
    """Landmarks of every frame of one video (frame pixels, after any resize), and its smoothed boxes."""

    path: str
    landmarks: np.ndarray            # (N, 468, 2) float32, NaN where no face
    frame_size: tuple[int, int]      # (width, height) the landmarks refer to
    source_size: tuple[int, int]     # (width, height) as decoded

    @property
    def n_frames(self) -> int:
        return len(self.landmarks)

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.landmarks[:, 0, 0])

    def smoothed_boxes(self, window: int) -> np.ndarray | None:
        """(N, 3) [cx, cy, side] per frame, centred moving average over faces found; None without any face."""
        raw = np.full((self.n_frames, 3), np.nan, np.float32)
        for k in np.flatnonzero(self.found):
            raw[k] = landmark_box(self.landmarks[k])
        return smooth_boxes(raw, window)


def smooth_boxes(raw: np.ndarray, window: int) -> np.ndarray | None:
    """Mean of the valid rows of ``raw`` (N, 3) within ``window // 2`` frames of each frame.

    Frames with no valid row nearby take the nearest frame's smoothed box.
    None when no row is valid.
    """
    valid = np.isfinite(raw[:, 0])
    if not valid.any():
        return None
    half = max(int(window), 1) // 2
    sums = _centred_sums(np.where(valid[:, None], raw, 0.0), half)
    counts = _centred_sums(valid[:, None].astype(np.float64), half)[:, 0]
    smoothed = np.full_like(raw, np.nan)
    has = counts > 0
    smoothed[has] = sums[has] / counts[has, None]
    return smoothed[nearest_valid(has)].astype(np.float32)


def _centred_sums(values: np.ndarray, half: int) -> np.ndarray:
    """Sum of rows k - half .. k + half of ``values`` (N, C) for every k, clipped at the ends."""
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    k = np.arange(len(values))
    return cumulative[np.minimum(k + half + 1, len(values))] - cumulative[np.maximum(k - half, 0)]


def fit_frame(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` resized to ``size`` (width, height); unchanged when ``size`` is None or already met."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    shrink = image.shape[1] > size[0]
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def frames_from(path: str | os.PathLike, fps: float, start: int, limit: int) -> Iterator[tuple[int, np.ndarray]]:
    """(k, RGB frame) resampled to ``fps`` from frame ``start`` on, k counted from there; at most ``limit`` (0: all)."""
    for frame in iter_frames(path, fps=fps):
        k = frame.index - start
        if limit and k >= limit:
            return
        if k >= 0:
            yield k, frame.image


def frames_at(path: str | os.PathLike, fps: float, limit: int, size: tuple[int, int] | None,
              start: int = 0) -> Iterator[np.ndarray]:
    """RGB frames at ``fps`` from frame ``start`` (at most ``limit``; 0: all), resized to ``size`` if given."""
    for _, image in frames_from(path, fps, start, limit):
        yield fit_frame(image, size)


def track_faces(path: str | os.PathLike, size: tuple[int, int] | None, cfg: EvalConfig, label: str,
                start: int = 0) -> FaceTrack:
    """Pass 1: landmarks of every frame (at ``cfg.fps``, from frame ``start``, up to ``cfg.max_frames``).

    In ``size`` pixels if given; the ground truth of a time split starts at a later ``start``.
    """
    landmarks, source_size, frame_size = [], None, None
    with FaceTracker(cfg.detection_confidence, cfg.tracking_confidence) as tracker:
        frames = frames_from(path, cfg.fps, start, cfg.max_frames)
        for _, source in tqdm(frames, desc=f"faces in {label}", unit="frame", leave=False):
            source_size = source_size or (source.shape[1], source.shape[0])
            image = fit_frame(source, size)
            frame_size = (image.shape[1], image.shape[0])
            points = tracker(image)
            landmarks.append(np.full((468, 2), np.nan, np.float32) if points is None else points.astype(np.float32))
    if not landmarks:
        raise EvaluationError(path, f"has no frames from frame {start} (at {cfg.fps:g} fps) on")
    return FaceTrack(str(path), np.stack(landmarks), frame_size, source_size)


def read_speech(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray | None:
    """The audio track of ``path`` as mono float32 at ``sample_rate``, at its recorded level; None without one.

    Not peak-normalised (unlike the training audio): SyncNet's MFCC energy
    term depends on the level, and syncnet_python reads the file as it is.
    """
    try:
        return load_audio(path, sample_rate, peak_normalise=False).samples
    except NoAudioStream:
        return None
    except AudioError as error:
        raise EvaluationError(path, error.problem) from None


def speech_from(path: str | os.PathLike, start: int, fps: float) -> np.ndarray | None:
    """:func:`read_speech` (of a video or a wav) from video frame ``start`` on, so that sample 0 is that frame's."""
    speech = read_speech(path, SPEECH_RATE)
    if speech is None:
        return None
    speech = speech[round(start / fps * SPEECH_RATE):]
    return speech if len(speech) else None


# --------------------------------------------------------------------------- pass 2: scores


@dataclass
class PairEvaluation:
    """The result for one pair: ``report`` (JSON-ready), per-frame series, and FID features for pooling."""

    report: dict
    per_frame: dict[str, np.ndarray]                # metric -> (N,) with NaN where not computed
    fid_features: tuple[np.ndarray, np.ndarray] | None = None   # (generated, ground truth), (N, 2048) float32


class _Scores:
    """Accumulates per-frame scores and network inputs during pass 2."""

    def __init__(self, n: int, nets: Networks, cfg: EvalConfig):
        self.cfg, self.nets = cfg, nets
        wanted = [m for m in ("psnr", "ssim", "mouth_psnr", "mouth_ssim", "lmd") if m in cfg.metrics]
        if nets.lpips is not None:
            wanted.append("lpips")
        self.per_frame = {m: np.full(n, np.nan) for m in wanted}
        self._lpips_batch: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._fid_batch: list[tuple[np.ndarray, np.ndarray]] = []
        self.fid_pred: list[np.ndarray] = []
        self.fid_gt: list[np.ndarray] = []

    def add(self, k: int, pred: np.ndarray, gt: np.ndarray, pred_lm: np.ndarray | None, gt_lm: np.ndarray | None):
        pf = self.per_frame
        if "psnr" in pf:
            pf["psnr"][k] = image_metrics.psnr(pred, gt)
        if "ssim" in pf:
            pf["ssim"][k] = image_metrics.ssim(pred, gt)
        if "lmd" in pf:
            pf["lmd"][k] = frame_lmd(pred_lm, gt_lm)
        mouth = None if gt_lm is None else image_metrics.mouth_box(gt_lm, self.cfg.crop_size, self.cfg.mouth_margin)
        if mouth is not None and "mouth_psnr" in pf:
            pf["mouth_psnr"][k] = image_metrics.psnr(image_metrics.cut(pred, mouth), image_metrics.cut(gt, mouth))
        if mouth is not None and "mouth_ssim" in pf:
            pf["mouth_ssim"][k] = image_metrics.ssim(image_metrics.cut(pred, mouth), image_metrics.cut(gt, mouth))
        if self.nets.lpips is not None:
            self._lpips_batch.append((k, pred, gt))
            if len(self._lpips_batch) == self.cfg.batch_size:
                self._flush_lpips()
        if self.nets.inception is not None:
            self._fid_batch.append((pred, gt))
            if len(self._fid_batch) == self.cfg.batch_size:
                self._flush_fid()

    @torch.no_grad()
    def _flush_lpips(self) -> None:
        if not self._lpips_batch:
            return
        index, pred, gt = zip(*self._lpips_batch)
        to_tensor = lambda images: (torch.from_numpy(np.stack(images)).to(self.cfg.device)  # noqa: E731
                                    .permute(0, 3, 1, 2).float() / 127.5 - 1)
        self.per_frame["lpips"][list(index)] = self.nets.lpips(to_tensor(pred), to_tensor(gt)).cpu().numpy()
        self._lpips_batch.clear()

    def _flush_fid(self) -> None:
        from dithead.metrics.fid import inception_features

        if not self._fid_batch:
            return
        pred, gt = (np.stack(images) for images in zip(*self._fid_batch))
        self.fid_pred.append(inception_features(self.nets.inception, pred, self.cfg.device).astype(np.float32))
        self.fid_gt.append(inception_features(self.nets.inception, gt, self.cfg.device).astype(np.float32))
        self._fid_batch.clear()

    def finish(self) -> tuple[np.ndarray, np.ndarray] | None:
        self._flush_lpips()
        self._flush_fid()
        if not self.fid_pred:
            return None
        return np.concatenate(self.fid_pred), np.concatenate(self.fid_gt)


@dataclass
class _PairFaces:
    pred: FaceTrack
    gt: FaceTrack
    pred_boxes: np.ndarray          # (N, 3) smoothed [cx, cy, side] cutting the generated video
    gt_boxes: np.ndarray
    shared: bool                    # the ground truth's boxes cut both videos
    gt_start: int = 0               # ground-truth frame shown with generated frame 0

    @property
    def n(self) -> int:
        """Frames compared: the overlap of the two videos."""
        return min(self.pred.n_frames, self.gt.n_frames)


class Evaluator:
    """Loads the pretrained networks once; ``evaluate(pred, gt)`` scores one pair of videos.

    ``weights``: the ``weights:`` section of params.yaml (``lpips_backbone``,
    ``lpips_linear``, ``inception_fid``, ``syncnet``); a metric whose weights
    are not set is reported as missing, never estimated.
    """

    def __init__(self, weights: Mapping[str, str] | None = None, config: EvalConfig | None = None):
        self.cfg = config or EvalConfig()
        self.nets = Networks.load(weights or {}, self.cfg.metrics, self.cfg.device)

    def evaluate(self, pred: str | os.PathLike, gt: str | os.PathLike, audio: str | os.PathLike | None = None,
                 side_by_side: str | os.PathLike | None = None, gt_start: int = 0,
                 gt_audio: str | os.PathLike | None = None) -> PairEvaluation:
        """Score ``pred`` against ``gt`` from its frame ``gt_start`` (at ``cfg.fps``) on.

        ``audio``: speech for the lip-sync scores (default: ``pred``'s own
        track). ``side_by_side``: also write a video of the crops,
        ground truth | generated | absolute difference. ``gt_audio``: the
        ground truth's speech when not its own track (a raw clip's ``.wav``).
        """
        cfg = self.cfg
        if gt_start < 0:
            raise EvaluationError(gt, f"the ground truth's start frame must be 0 or more, got {gt_start}")
        pred_info, gt_info = probe_video(pred), probe_video(gt)
        faces = self._track(pred, gt, pred_info.width / pred_info.height, gt_start)
        missing = dict(self.nets.missing)
        speech, audio_note = self._speech(pred, audio, missing)
        sync_scorer = self._sync_scorer(speech)
        scores = _Scores(faces.n, self.nets, cfg)
        writer = _side_by_side_writer(side_by_side, cfg.fps,
                                      audio if audio is not None else (pred if pred_info.has_audio else None))
        try:
            self._score_frames(pred, gt, faces, scores, sync_scorer, writer)
        finally:
            if writer is not None:
                writer.close()
        fid_features = scores.finish()

        resized = faces.shared and faces.pred.source_size != faces.gt.frame_size
        report = {
            "pred": str(pred), "gt": str(gt),
            "metrics": {}, "missing": missing, "notes": {},
            "frames": _frames_report(pred_info, gt_info, faces.pred, faces.gt, faces.n, cfg, gt_start),
            "crop": {"size": cfg.crop_size, "margin": cfg.crop_margin,
                     "boxes": "ground truth's boxes for both videos" if faces.shared else "each video's own face boxes",
                     "generated_resized_from": list(faces.pred.source_size) if resized else None},
            "audio": audio_note,
        }
        per_frame = _summarise_per_frame(scores.per_frame, report, cfg, faces.pred, faces.gt, faces.n)
        if fid_features is not None:
            _report_fid(report, *fid_features)
        if sync_scorer is not None:
            _report_sync(report, sync_scorer, speech, cfg)
        gt_source = gt_audio if gt_audio is not None else gt
        gt_speech = speech_from(gt_source, gt_start, cfg.fps)
        report["ground_truth_audio"] = None if gt_speech is None else str(gt_source)
        per_frame.update(_report_lipsync(report, faces, speech, gt_speech, cfg))
        report["metrics"] = {m: report["metrics"][m] for m in REPORTED if m in report["metrics"]}
        return PairEvaluation(report, per_frame, fid_features)

    def _track(self, pred, gt, pred_aspect: float, gt_start: int) -> "_PairFaces":
        """Pass 1 on both videos; the generated one in the ground truth's pixels when the boxes are shared."""
        cfg = self.cfg
        gt_track = track_faces(gt, None, cfg, "ground truth", start=gt_start)
        shared = _shared_boxes(cfg.boxes, pred_aspect, gt_track.frame_size)
        pred_track = track_faces(pred, gt_track.frame_size if shared else None, cfg, "generated")
        gt_boxes = _require_boxes(gt_track, cfg.smooth_frames, "ground truth")
        pred_boxes = gt_boxes if shared else _require_boxes(pred_track, cfg.smooth_frames, "generated video")
        return _PairFaces(pred_track, gt_track, pred_boxes, gt_boxes, shared, gt_start)

    def _score_frames(self, pred, gt, faces: "_PairFaces", scores: "_Scores", sync_scorer, writer) -> None:
        """Pass 2: crop both videos frame by frame and feed every metric."""
        from dithead.metrics.syncnet import syncnet_crop

        cfg = self.cfg
        pred_frames = frames_at(pred, cfg.fps, faces.n, faces.gt.frame_size if faces.shared else None)
        gt_frames = frames_at(gt, cfg.fps, faces.n, None, start=faces.gt_start)
        pairs = tqdm(zip(pred_frames, gt_frames), total=faces.n, leave=False, desc="scoring", unit="frame")
        for k, (pred_image, gt_image) in enumerate(pairs):
            gt_box = square_box(faces.gt_boxes[k], cfg.crop_margin)
            pred_box = gt_box if faces.shared else square_box(faces.pred_boxes[k], cfg.crop_margin)
            gt_crop = crop_box(gt_image, gt_box, cfg.crop_size)
            pred_crop = crop_box(pred_image, pred_box, cfg.crop_size)
            scores.add(k, pred_crop, gt_crop, _crop_landmarks(faces.pred, k, pred_box, cfg.crop_size),
                       _crop_landmarks(faces.gt, k, gt_box, cfg.crop_size))
            if sync_scorer is not None:
                sync_scorer.add_frame(syncnet_crop(pred_image, faces.pred_boxes[k]))
            if writer is not None:
                writer.write(np.hstack([gt_crop, pred_crop, cv2.absdiff(gt_crop, pred_crop)]))

    def _speech(self, pred, audio, missing: dict) -> tuple[np.ndarray | None, str | None]:
        """The generated side's speech for LSE and lip sync (``audio``, else ``pred``'s own track), and its origin."""
        wanted = [m for m in SYNC_METRICS if m in self.cfg.metrics and m not in missing]
        source = audio if audio is not None else pred
        speech = read_speech(source, SPEECH_RATE)
        if speech is None or len(speech) == 0:
            for m in wanted:
                missing[m] = (f"not computed: {source} has no audio track"
                              + ("" if audio is not None else "; pass the driving audio (--audio)"))
            return None, None
        origin = "given" if audio is not None else "the generated video's own track"
        return speech, f"{source} ({origin})"

    def _sync_scorer(self, speech):
        if speech is None or self.nets.syncnet is None:
            return None
        from dithead.metrics.syncnet import SyncNetScorer

        return SyncNetScorer(self.nets.syncnet, self.cfg.device, self.cfg.batch_size, self.cfg.syncnet_vshift)


def _shared_boxes(mode: str, pred_aspect: float, gt_size: tuple[int, int]) -> bool:
    if mode != "auto":
        return mode == "shared"
    gt_aspect = gt_size[0] / gt_size[1]
    return abs(pred_aspect - gt_aspect) / gt_aspect < 0.01


def _require_boxes(track: FaceTrack, window: int, label: str) -> np.ndarray:
    boxes = track.smoothed_boxes(window)
    if boxes is None:
        raise EvaluationError(track.path, f"no face found in any of the {track.n_frames} frames of the {label}; "
                                          "the metrics are computed on face crops")
    return boxes


def _crop_landmarks(track: FaceTrack, k: int, box: np.ndarray, size: int) -> np.ndarray | None:
    return to_crop_coords(track.landmarks[k], box, size) if track.found[k] else None


def _side_by_side_writer(path, fps: float, audio):
    if path is None:
        return None
    from dithead.inference.video_writer import VideoWriter

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return VideoWriter(path, fps, audio=audio)


def _frames_report(pred_info, gt_info, pred_track: FaceTrack, gt_track: FaceTrack, n: int, cfg: EvalConfig,
                   gt_start: int = 0) -> dict:
    return {
        "fps": cfg.fps,
        "compared": n,
        "overlap_seconds": round(n / cfg.fps, 3),
        "generated": pred_track.n_frames, "ground_truth": gt_track.n_frames, "ground_truth_start": gt_start,
        "generated_source_fps": round(pred_info.fps, 3), "ground_truth_source_fps": round(gt_info.fps, 3),
        "limited_by_max_frames": bool(cfg.max_frames) and n == cfg.max_frames,
        "ground_truth_without_face": int((~gt_track.found[:n]).sum()),
        "generated_without_face": int((~pred_track.found[:n]).sum()),
    }


def _summarise_per_frame(per_frame: dict[str, np.ndarray], report: dict, cfg: EvalConfig,
                         pred_track: FaceTrack, gt_track: FaceTrack, n: int) -> dict[str, np.ndarray]:
    """Means into ``report["metrics"]``, frames scored per metric, PSNR caps (said so), reasons for empty metrics."""
    metrics, missing, notes = report["metrics"], report["missing"], report["notes"]
    scored_frames = report["frames"].setdefault("scored", {})
    for name in ("psnr", "mouth_psnr"):
        if name in per_frame:
            values = per_frame[name]
            capped = int(np.isposinf(values).sum())
            per_frame[name] = np.where(np.isposinf(values), cfg.psnr_cap, values)
            if capped:
                notes[name] = (f"{capped} of {int((~np.isnan(values)).sum())} frames identical: their PSNR is "
                               f"infinite and counted as {cfg.psnr_cap:g} dB (evaluate.psnr_cap)")
                report["frames"][f"{name}_capped"] = capped
    for name, values in per_frame.items():
        scored = np.isfinite(values)
        scored_frames[name] = int(scored.sum())
        if scored.any():
            metrics[name] = float(values[scored].mean())
        elif name == "lmd":
            missing[name] = _no_face_reason(pred_track, gt_track, n)
        elif name.startswith("mouth_"):
            missing[name] = "not computed: no frame of the ground truth has lips found large enough for SSIM"
    return per_frame


def _no_face_reason(pred_track: FaceTrack, gt_track: FaceTrack, n: int) -> str:
    if not pred_track.found[:n].any():
        return f"not computed: no face found in any compared frame of the generated video {pred_track.path}"
    return "not computed: no compared frame has a face found in both videos"


def _report_fid(report: dict, pred: np.ndarray, gt: np.ndarray) -> None:
    from dithead.metrics.fid import frechet_distance

    if len(pred) < 2:
        report["missing"]["fid"] = "not computed: FID needs at least 2 frames"
        return
    report["metrics"]["fid"] = frechet_distance(pred, gt)
    report["notes"]["fid"] = (f"over {len(pred)} frames of this pair; FID from few frames is biased upwards, "
                              "compare values from equal frame counts")


def _report_sync(report: dict, scorer, speech: np.ndarray, cfg: EvalConfig) -> None:
    try:
        result = scorer.scores(speech)
    except ValueError as exc:
        for m in SYNC_METRICS:
            if m in cfg.metrics:
                report["missing"][m] = f"not computed: {exc}"
        return
    if "lse_d" in cfg.metrics:
        report["metrics"]["lse_d"] = result.lse_d
    if "lse_c" in cfg.metrics:
        report["metrics"]["lse_c"] = result.lse_c
    report["notes"]["lse"] = (f"{result.windows} windows of 5 frames; best audio-video offset "
                              f"{result.offset:+d} frames (searched ±{cfg.syncnet_vshift})")


def _report_lipsync(report: dict, faces: _PairFaces, speech: np.ndarray | None, gt_speech: np.ndarray | None,
                    cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Lip-sync metrics from pass 1's landmarks into ``report`` (no second face pass); returns the series.

    A metric the clip does not allow is left out of ``metrics`` (which stay
    finite numbers) and the reason goes to ``notes``: unlike ``missing``, it
    is not a requested metric that failed.
    """
    n = faces.n
    metrics, series = lip_sync_metrics(faces.pred.landmarks[:n], faces.gt.landmarks[:n], speech, gt_speech,
                                       SPEECH_RATE, cfg.fps, cfg.lipsync_max_offset)
    absent: dict[str, list[str]] = {}
    for name in LIPSYNC_METRICS:
        value = metrics.get(name, math.nan)
        if math.isfinite(value):
            report["metrics"][name] = value
        else:
            absent.setdefault(why_missing(name, name in metrics), []).append(name)
    if absent:
        report["notes"]["lipsync"] = "not computed: " + "; ".join(f"{', '.join(names)} ({reason})"
                                                                  for reason, names in absent.items())
    return series


# --------------------------------------------------------------------------- entry points


def evaluate_videos(pred_path: str | os.PathLike, gt_path: str | os.PathLike, weights: Mapping[str, str] | None = None,
                    audio: str | os.PathLike | None = None, side_by_side: str | os.PathLike | None = None,
                    gt_start: int = 0, gt_audio: str | os.PathLike | None = None, **config) -> dict:
    """Every requested metric of ``pred_path`` against ``gt_path`` (from its frame ``gt_start``); returns the report.

    ``weights``: the ``weights:`` section of params.yaml. ``config``: fields of
    :class:`EvalConfig` (metrics, fps, crop_size, crop_margin, max_frames, ...).
    The report has ``metrics`` (name -> value), ``missing`` (name -> reason),
    ``notes``, ``frames`` (counts, overlap, frames without a face), ``crop``
    and ``audio``.
    """
    evaluator = Evaluator(weights, EvalConfig(**config))
    return evaluator.evaluate(pred_path, gt_path, audio, side_by_side, gt_start, gt_audio).report


def summarise(results: Mapping[str, PairEvaluation], missing: Mapping[str, str] | None = None) -> dict:
    """Overall metrics over several pairs (e.g. every held-out clip).

    Frame metrics are means over all frames of all clips; FID is computed on
    the pooled features of all clips (one distribution each side, as the
    paper); LSE-C/LSE-D and the lip-sync metrics are means over clips (as
    Wav2Lip's evaluation), except THEval's ``_score``s: THEval normalises the
    mean over the data set by the ground truth's mean, so they are computed
    from the means over the clips that have both.
    """
    overall: dict[str, float] = {}
    reasons = dict(missing or {})
    per_frame_names = {name for r in results.values() for name in r.per_frame}
    for name in METRICS:
        if name in per_frame_names:
            values = np.concatenate([r.per_frame[name] for r in results.values() if name in r.per_frame])
            if np.isfinite(values).any():
                overall[name] = float(values[np.isfinite(values)].mean())
        elif name == "fid":
            pairs = [r.fid_features for r in results.values() if r.fid_features is not None]
            if pairs and sum(len(p) for p, _ in pairs) >= 2:
                from dithead.metrics.fid import frechet_distance

                overall["fid"] = frechet_distance(np.concatenate([p for p, _ in pairs]),
                                                  np.concatenate([g for _, g in pairs]))
        elif name in SYNC_METRICS:
            values = [r.report["metrics"][name] for r in results.values() if name in r.report["metrics"]]
            if values:
                overall[name] = float(np.mean(values))
        for r in results.values():
            if name not in overall and name in r.report["missing"]:
                reasons.setdefault(name, r.report["missing"][name])
    overall.update(_summarise_lipsync(results))
    overall["frames"] = int(sum(r.report["frames"]["compared"] for r in results.values()))
    overall["clips"] = len(results)
    return {"metrics": {k: overall[k] for k in (*REPORTED, "frames", "clips") if k in overall}, "missing": reasons}


def _summarise_lipsync(results: Mapping[str, PairEvaluation]) -> dict[str, float]:
    """Lip-sync metrics over clips: means, and THEval scores from the means (see :func:`summarise`)."""
    clip_metrics = [r.report["metrics"] for r in results.values()]
    overall = {}
    for name in LIPSYNC_METRICS:
        values = [m[name] for m in clip_metrics if name in m]
        if values and not name.endswith("_score"):
            overall[name] = float(np.mean(values))
    for name in THEVAL:
        paired = [(m[name], m[f"{name}_gt"]) for m in clip_metrics if name in m and f"{name}_gt" in m]
        score = gt_normalised(*np.mean(paired, axis=0)) if paired else math.nan
        if math.isfinite(score):
            overall[f"{name}_score"] = score
    return overall


# --------------------------------------------------------------------------- held-out clips (the evaluate stage)


@dataclass
class SampleSpec:
    """One output video of the sample stage and the ground truth it is compared with."""

    path: Path
    clip: str                       # the source clip: ground truth is raw_dir/<clip>.*
    start_frame: int = 0            # ground-truth frame shown with the output's frame 0 (a time split)
    variant: str = "generated"      # or a baseline: reference_copy, mismatched_audio, silence

    @property
    def name(self) -> str:
        return self.path.stem


def sample_specs(samples_dir: str | os.PathLike) -> list[SampleSpec]:
    """Every top-level ``*.mp4`` of ``samples_dir``, described by its entry in ``report.json`` when it has one.

    The sample stage knows which clip (and from which frame) an output was
    made from and whether it is a baseline; without an entry, the output's
    own name is the clip's, from frame 0, a generated video.
    """
    samples_dir = Path(samples_dir)
    entries = _sample_report(samples_dir / "report.json")
    specs = []
    for path in sorted(samples_dir.glob("*.mp4")):
        entry = entries.get(path.name)
        entry = entry if isinstance(entry, Mapping) else {}
        specs.append(SampleSpec(path, str(entry.get("clip") or path.stem), int(entry.get("start_frame") or 0),
                                str(entry.get("variant") or "generated")))
    return specs


def _sample_report(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvaluationError(path, f"is not valid JSON ({exc})") from None
    return report if isinstance(report, dict) else {}


@dataclass
class ClipsEvaluation:
    """Results over generated clips (and baselines) and their ground truths."""

    results: dict[str, PairEvaluation]      # output name -> result
    failed: dict[str, str]                  # output name -> why it could not be evaluated
    missing: dict[str, str]                 # metric -> why it is not computed
    variants: dict[str, str] = field(default_factory=dict)   # output name -> variant (absent: generated)

    def metrics_json(self) -> dict:
        """``metrics/eval.json``: overall (generated videos only), each baseline's summary, per-output numbers.

        Baselines (a copy of the reference, mismatched audio, silence) are
        summarised apart, so that the overall numbers are the model's and the
        baselines show what a good or a bad score looks like on these clips.
        """
        groups: dict[str, dict[str, PairEvaluation]] = {}
        for name, result in self.results.items():
            groups.setdefault(self.variants.get(name, "generated"), {})[name] = result
        summary = summarise(groups.pop("generated", {}), self.missing)
        clips = {}
        for name, result in self.results.items():
            clips[name] = dict(result.report["metrics"])
            clips[name]["frames"] = result.report["frames"]["compared"]
        return {"overall": summary["metrics"],
                "baselines": {v: summarise(groups[v])["metrics"] for v in VARIANTS if v in groups},
                "missing": summary["missing"], "failed": self.failed, "clips": clips}


def ground_truth_for(clip: str, raw_dir: Path) -> Path | None:
    """The raw video named ``clip`` (any video extension)."""
    from dithead.data.video_reader import is_video_file

    matches = sorted(p for p in Path(raw_dir).glob(f"{clip}.*") if is_video_file(p))
    return matches[0] if matches else None


def sidecar_audio(video: Path) -> Path | None:
    """The ``.wav`` beside a raw video: it replaces the video's own track (README, "Your own videos")."""
    return next((wav for wav in (video.with_suffix(".wav"), video.with_suffix(".WAV")) if wav.is_file()), None)


def evaluate_samples(samples_dir: str | os.PathLike, raw_dir: str | os.PathLike,
                     weights: WeightPaths | Mapping[str, str] | None, config: EvalConfig,
                     side_by_side: tuple[str, str | os.PathLike] | None = None) -> ClipsEvaluation:
    """Every ``samples_dir/*.mp4`` against its ground truth in ``raw_dir``, with the output's own audio.

    Which clip, start frame and variant: see :func:`sample_specs`.
    ``side_by_side``: (output name, path) for the comparison video of one
    output. An output that cannot be evaluated (no ground truth, no face,
    unreadable, unknown variant) is listed in ``failed`` with the reason; the
    others go on.
    """
    specs = sample_specs(samples_dir)
    if not specs:
        raise EvaluationError(samples_dir, "no generated videos (*.mp4) to evaluate")
    evaluator = Evaluator(weights, config)
    results, failed = {}, {}
    for spec in tqdm(specs, desc="evaluate", unit="clip"):
        gt = ground_truth_for(spec.clip, Path(raw_dir))
        problem = _spec_problem(spec, gt, raw_dir)
        if problem:
            failed[spec.name] = problem
            continue
        extra = side_by_side[1] if side_by_side is not None and side_by_side[0] == spec.name else None
        try:
            results[spec.name] = evaluator.evaluate(spec.path, gt, side_by_side=extra, gt_start=spec.start_frame,
                                                    gt_audio=sidecar_audio(gt))
        except (EvaluationError, VideoError) as exc:
            failed[spec.name] = str(exc)
    variants = {spec.name: spec.variant for spec in specs if spec.name in results}
    return ClipsEvaluation(results, failed, dict(evaluator.nets.missing), variants)


def _spec_problem(spec: SampleSpec, gt: Path | None, raw_dir) -> str | None:
    if spec.variant not in VARIANTS:
        return f"unknown variant {spec.variant!r} in report.json; known: {', '.join(VARIANTS)}"
    if spec.start_frame < 0:
        return f"start_frame {spec.start_frame} in report.json is negative"
    if gt is None:
        return f"no ground-truth video {spec.clip}.* in {raw_dir}"
    return None
