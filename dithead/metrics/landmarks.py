"""LMD, landmark distance around the mouth (Chen et al., 2018), from mediapipe landmarks.

Per frame: the mean Euclidean distance between the generated and the
ground-truth positions of the 40 lip points of mediapipe's face mesh, in
pixels of the evaluation crop. No absolute-position alignment is applied, so
a mouth drawn in the wrong place counts as well as a wrong mouth shape. It
needs no downloaded weights: mediapipe's wheel carries its face models.
"""

from __future__ import annotations

import numpy as np

from dithead.metrics.image import LIP_INDICES


def frame_lmd(pred_landmarks: np.ndarray | None, gt_landmarks: np.ndarray | None) -> float:
    """Mean lip-point distance for one frame; NaN when either face was not found."""
    if pred_landmarks is None or gt_landmarks is None:
        return float("nan")
    diff = pred_landmarks[LIP_INDICES].astype(np.float64) - gt_landmarks[LIP_INDICES].astype(np.float64)
    distance = float(np.mean(np.linalg.norm(diff, axis=1)))
    return distance if np.isfinite(distance) else float("nan")


def lmd(pred_landmarks, gt_landmarks) -> tuple[float, np.ndarray]:
    """(mean over frames where both faces were found, per-frame values with NaN elsewhere).

    Each argument is a sequence of (468, 2) arrays or None, one per frame.
    The mean is NaN when no frame has both faces.
    """
    per_frame = np.array([frame_lmd(p, g) for p, g in zip(pred_landmarks, gt_landmarks, strict=True)])
    valid = np.isfinite(per_frame)
    return (float(per_frame[valid].mean()) if valid.any() else float("nan")), per_frame
