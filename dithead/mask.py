"""Lower-face mask (paper 3.1): a convex-hull polygon over the jaw line up to
the nose, with Gaussian-blurred edges so generated mouths blend back in."""

from __future__ import annotations

import cv2
import numpy as np

# mediapipe face-mesh indices: the lower half of the face oval, ear to ear
# under the chin (from FACEMESH_FACE_OVAL), plus the middle of the nose bridge
# (195) so the hull reaches up to the nose but stays below the eyes.
JAW_LINE = [93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323]
NOSE_BRIDGE = [195]
LOWER_FACE_LANDMARKS = JAW_LINE + NOSE_BRIDGE


def lower_face_polygon(landmarks: np.ndarray, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """Convex hull (K, 2) of the lower-face landmarks, moved by ``shift`` pixels."""
    points = np.asarray(landmarks, dtype=np.float32)[LOWER_FACE_LANDMARKS] + np.asarray(shift, dtype=np.float32)
    if not np.isfinite(points).all():
        raise ValueError("lower-face landmarks contain NaN (frame without a face)")
    return cv2.convexHull(points).reshape(-1, 2)


def lower_face_mask(landmarks: np.ndarray, size: tuple[int, int], kernel_size: int, sigma: float,
                    shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """Float32 (H, W) mask in [0, 1]; 1 over mouth, chin and jaw, 0 elsewhere.

    ``kernel_size`` and ``sigma`` set the Gaussian that softens the edge
    (kernel_size is made odd; 0 or 1 gives a hard edge).
    """
    h, w = size
    mask = np.zeros((h, w), dtype=np.float32)
    # Sub-pixel polygon: cv2 draws with 4 fractional bits when given shift=4.
    polygon = np.round(lower_face_polygon(landmarks, shift) * 16).astype(np.int32)
    cv2.fillConvexPoly(mask, polygon, 1.0, lineType=cv2.LINE_AA, shift=4)
    k = int(kernel_size) | 1
    if k > 1:
        mask = cv2.GaussianBlur(mask, (k, k), sigmaX=float(sigma), sigmaY=float(sigma))
    return np.clip(mask, 0.0, 1.0)


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image * (1 - mask)``: the masked region goes to black; same dtype as ``image``."""
    keep = 1.0 - mask[..., None] if image.ndim == 3 else 1.0 - mask
    out = image.astype(np.float32) * keep
    return np.rint(out).astype(image.dtype) if np.issubdtype(image.dtype, np.integer) else out.astype(image.dtype)


def random_shift(rng: np.random.Generator, max_shift: int) -> tuple[int, int]:
    """A random (dx, dy), each in [-max_shift, max_shift] (training augmentation, paper 3.6)."""
    dx, dy = rng.integers(-max_shift, max_shift + 1, size=2)
    return int(dx), int(dy)
