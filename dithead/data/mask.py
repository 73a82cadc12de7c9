"""Lower-face mask (paper 3.1) with Gaussian-blurred edges so generated mouths blend back in.

Two regions (``mask.region``):

* ``jaw`` (the paper): the convex hull of the jaw line up to the nose. Its
  outline follows the current frame's chin, so the mask's shape alone tells
  a model how open the mouth is: in dubbing, where the video's own mouth is
  the wrong one, that leaks the wrong mouth into the result.
* ``below_nose``: everything under the line from the left face edge through
  the nose bridge to the right face edge (landmarks that the jaw does not
  move), widened by ``BELOW_NOSE_SIDE_MARGIN`` and running down past the
  crop's bottom edge. The outline moves with the head, not with the mouth,
  so only the audio (and the reference frame) can say how open it is; the
  same reason Wav2Lip masks the whole lower half of the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# mediapipe face-mesh indices: the lower half of the face oval, ear to ear
# under the chin (from FACEMESH_FACE_OVAL), plus the middle of the nose bridge
# (195) so the hull reaches up to the nose but stays below the eyes.
JAW_LINE = [93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323]
NOSE_BRIDGE = [195]
LOWER_FACE_LANDMARKS = JAW_LINE + NOSE_BRIDGE
# Top ends of the lower face oval (beside the ears, at about nose level): the jaw turns below them.
FACE_SIDES = (93, 323)
BELOW_NOSE_SIDE_MARGIN = 0.1     # widen the below-nose region by this fraction of the face width on each side
MASK_REGIONS = ("jaw", "below_nose")
# Outer lip contour: the mouth corners (61, 291), the top of the upper lip (0) and the bottom of the lower lip (17).
OUTER_LIPS = [61, 291, 0, 17]
# Widen the lips' box by this fraction of the mouth's width on every side, so that the box holds the open
# mouth of the frame and the skin its opening moves (mouth_box_mask).
MOUTH_BOX_MARGIN = 0.25


def lower_face_polygon(landmarks: np.ndarray, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """Convex hull (K, 2) of the lower-face landmarks, moved by ``shift`` pixels."""
    points = np.asarray(landmarks, dtype=np.float32)[LOWER_FACE_LANDMARKS] + np.asarray(shift, dtype=np.float32)
    if not np.isfinite(points).all():
        raise ValueError("lower-face landmarks contain NaN (frame without a face)")
    return cv2.convexHull(points).reshape(-1, 2)


def below_nose_polygon(landmarks: np.ndarray, height: int, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """(5, 2) polygon: face sides and nose bridge on top, down past row ``height``; moved by ``shift``."""
    points = np.asarray(landmarks, dtype=np.float32)
    left, right, nose = points[FACE_SIDES[0]], points[FACE_SIDES[1]], points[NOSE_BRIDGE[0]]
    if not np.isfinite(np.stack([left, right, nose])).all():
        raise ValueError("face-side or nose landmarks contain NaN (frame without a face)")
    margin = BELOW_NOSE_SIDE_MARGIN * abs(float(right[0] - left[0]))
    lo, hi = (left, right) if left[0] <= right[0] else (right, left)
    lo, hi = lo - (margin, 0), hi + (margin, 0)
    bottom = float(max(height, lo[1], hi[1])) + 2 * margin + 1
    polygon = np.array([lo, nose, hi, (hi[0], bottom), (lo[0], bottom)], dtype=np.float32)
    return polygon + np.asarray(shift, dtype=np.float32)


def lower_face_mask(landmarks: np.ndarray, size: tuple[int, int], kernel_size: int, sigma: float,
                    shift: tuple[float, float] = (0, 0), region: str = "jaw") -> np.ndarray:
    """Float32 (H, W) mask in [0, 1]; 1 over mouth, chin and jaw, 0 elsewhere.

    ``kernel_size`` and ``sigma`` set the Gaussian that softens the edge
    (kernel_size is made odd; 0 or 1 gives a hard edge). ``region``: one of
    ``MASK_REGIONS`` (see the module docstring).
    """
    h, w = size
    mask = np.zeros((h, w), dtype=np.float32)
    if region == "jaw":
        outline = lower_face_polygon(landmarks, shift)
    elif region == "below_nose":
        outline = below_nose_polygon(landmarks, h, shift)
    else:
        raise ValueError(f"mask.region must be one of {', '.join(MASK_REGIONS)}, not {region!r}")
    # Sub-pixel polygon: cv2 draws with 4 fractional bits when given shift=4.
    polygon = np.round(outline * 16).astype(np.int32)
    cv2.fillConvexPoly(mask, polygon, 1.0, lineType=cv2.LINE_AA, shift=4)
    k = int(kernel_size) | 1
    if k > 1:
        mask = cv2.GaussianBlur(mask, (k, k), sigmaX=float(sigma), sigmaY=float(sigma))
    return np.clip(mask, 0.0, 1.0)


def mouth_box_mask(landmarks: np.ndarray, size: tuple[int, int], margin: float = MOUTH_BOX_MARGIN) -> np.ndarray:
    """Float32 (H, W): 1 inside the box around this frame's lips (widened by ``margin`` x mouth width), 0 elsewhere.

    It marks where the audio decides the picture, for the DiT's loss weighting (``dit.mouth_weight``);
    no model ever sees it.
    """
    points = np.asarray(landmarks, dtype=np.float32)[OUTER_LIPS]
    if not np.isfinite(points).all():
        raise ValueError("lip landmarks contain NaN (frame without a face)")
    pad = margin * float(np.ptp(points[:, 0]))
    (x0, y0), (x1, y1) = points.min(axis=0) - pad, points.max(axis=0) + pad
    h, w = size
    mask = np.zeros((h, w), dtype=np.float32)
    rows = slice(max(0, int(np.floor(y0))), max(0, int(np.ceil(y1)) + 1))
    cols = slice(max(0, int(np.floor(x0))), max(0, int(np.ceil(x1)) + 1))
    mask[rows, cols] = 1.0
    return mask


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image * (1 - mask)``: the masked region goes to black; same dtype as ``image``."""
    keep = 1.0 - mask[..., None] if image.ndim == 3 else 1.0 - mask
    out = image.astype(np.float32) * keep
    return np.rint(out).astype(image.dtype) if np.issubdtype(image.dtype, np.integer) else out.astype(image.dtype)


def random_shift(rng: np.random.Generator, max_shift: int) -> tuple[int, int]:
    """A random (dx, dy), each in [-max_shift, max_shift] (training augmentation, paper 3.6)."""
    dx, dy = rng.integers(-max_shift, max_shift + 1, size=2)
    return int(dx), int(dy)


@dataclass
class MaskSettings:
    """The lower-face mask of ``dithead.data.mask`` (the ``mask:`` params)."""

    kernel_size: int = 31
    sigma: float = 8.0
    max_shift: int = 4
    region: str = "jaw"
