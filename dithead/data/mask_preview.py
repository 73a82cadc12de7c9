"""Preview image of a processed clip: crops, their lower-face masks, and the masked crops."""

from __future__ import annotations

import os

import cv2
import numpy as np

from dithead.data.mask import MaskSettings, apply_mask, lower_face_mask
from dithead.data.store import ProcessedClip
from dithead.fileio import atomic_path


def preview_indices(clip: ProcessedClip, count: int) -> list[int]:
    """``count`` valid frames spread evenly over the clip."""
    valid = np.nonzero(np.asarray(clip.valid))[0]
    if len(valid) == 0 or count <= 0:
        return []
    return sorted({int(valid[i]) for i in np.linspace(0, len(valid) - 1, count).round().astype(int)})


def mask_preview(clip: ProcessedClip, count: int, settings: MaskSettings) -> np.ndarray:
    """RGB grid, one column per frame: crop with mask outline | mask | masked crop (unshifted masks)."""
    columns = []
    for i in preview_indices(clip, count):
        crop = clip.crop(i)
        mask = lower_face_mask(clip.landmarks[i], crop.shape[:2], settings.kernel_size, settings.sigma,
                               region=settings.region)
        outlined = crop.copy()
        contours, _ = cv2.findContours((mask > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(outlined, contours, -1, (0, 255, 0), 1)
        mask_rgb = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
        columns.append(np.concatenate([outlined, mask_rgb, apply_mask(crop, mask)], axis=0))
    if not columns:
        return np.zeros((8, 8, 3), np.uint8)
    return np.concatenate(columns, axis=1)


def save_png(path: str | os.PathLike, image_rgb: np.ndarray, min_side: int = 256) -> None:
    """Write an RGB image, upscaled (nearest) so tiny crops stay visible."""
    scale = max(1, int(np.ceil(min_side / max(1, min(image_rgb.shape[:2])))))
    if scale > 1:
        image_rgb = cv2.resize(image_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode image")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())
