"""Pixel metrics on one pair of RGB uint8 images: PSNR, SSIM, and the mouth region.

SSIM is the standard one of Wang et al. (2004): 11×11 Gaussian window,
σ = 1.5, K1 = 0.01, K2 = 0.03, population covariances, computed per colour
channel and averaged (scikit-image's ``structural_similarity`` with
``gaussian_weights=True``).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

DATA_RANGE = 255.0
SSIM_MIN_SIDE = 11   # the Gaussian window's side (σ = 1.5, truncated at 3.5σ)

# Lip contour points of mediapipe's 468-point face mesh (``FACEMESH_LIPS``).
LIP_INDICES = np.array(sorted({
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375,
    402, 405, 409, 415,
}))


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; ``inf`` for identical images."""
    _check_pair(pred, gt)
    mse = float(np.mean((pred.astype(np.float64) - gt.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE ** 2 / mse)


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean structural similarity (1 for identical images)."""
    _check_pair(pred, gt)
    if min(gt.shape[:2]) < SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels, got {gt.shape[:2]}")
    return float(structural_similarity(gt, pred, data_range=DATA_RANGE, channel_axis=-1,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def mouth_box(landmarks: np.ndarray, image_size: int, margin: float) -> tuple[int, int, int, int] | None:
    """Square [x0, y0, x1, y1] around the lips (mediapipe indices), grown by ``margin``, inside the image.

    ``landmarks``: (468, 2) in the image's pixels. None when the landmarks are
    missing or the box would be too small for SSIM.
    """
    lips = landmarks[LIP_INDICES]
    if not np.isfinite(lips).all():
        return None
    (lx, ly), (hx, hy) = lips.min(axis=0), lips.max(axis=0)
    side = max(hx - lx, hy - ly) * (1 + margin)
    cx, cy = (lx + hx) / 2, (ly + hy) / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = int(round(cx + side / 2)), int(round(cy + side / 2))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, image_size), min(y1, image_size)
    if min(x1 - x0, y1 - y0) < SSIM_MIN_SIDE:
        return None
    return x0, y0, x1, y1


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"images differ in shape: {pred.shape} and {gt.shape}")
