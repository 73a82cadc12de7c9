"""The lower-face mask: what it covers, and whether its outline gives the mouth away."""

from __future__ import annotations

import numpy as np
import pytest

from dithead.data.mask import JAW_LINE, lower_face_mask, mouth_box_mask
from dithead.data.store import ProcessedClip

LOWER_LIP_AND_CHIN = [14, 15, 16, 17, 18, 200, 199, 175, 152, 148, 176, 149, 377, 400, 378, 87, 178, 317, 402]


@pytest.fixture(scope="module")
def landmarks(processed_demo):
    return np.asarray(ProcessedClip(processed_demo / "data" / "processed" / "astronaut").landmarks[10])


def open_mouth(points: np.ndarray, pixels: float) -> np.ndarray:
    """The same face with the jaw dropped by ``pixels``: lower lip, chin and lower jaw line move down."""
    moved = points.copy()
    lower = sorted(set(LOWER_LIP_AND_CHIN) | set(JAW_LINE[3:-3]))
    moved[lower, 1] += pixels
    return moved


@pytest.mark.parametrize("region", ["jaw", "below_nose"])
def test_mask_covers_lips_and_chin_not_eyes(landmarks, region):
    mask = lower_face_mask(landmarks, (64, 64), kernel_size=9, sigma=2.0, region=region)

    def at(i):
        x, y = np.clip(np.round(landmarks[i]).astype(int), 0, 63)
        return mask[y, x]

    assert min(at(13), at(14), at(0), at(17)) > 0.9                       # lips
    assert at(152) > 0.3                                                  # chin
    assert max(at(33), at(263), at(159), at(386)) < 0.05                  # eye corners and lids


def test_jaw_mask_outline_follows_the_mouth(landmarks):
    closed = lower_face_mask(landmarks, (64, 64), 9, 2.0, region="jaw")
    opened = lower_face_mask(open_mouth(landmarks, 4), (64, 64), 9, 2.0, region="jaw")
    assert np.abs(opened - closed).max() > 0.5          # the leak the below-nose region removes


def test_below_nose_mask_outline_does_not_move_with_the_mouth(landmarks):
    closed = lower_face_mask(landmarks, (64, 64), 9, 2.0, region="below_nose")
    opened = lower_face_mask(open_mouth(landmarks, 4), (64, 64), 9, 2.0, region="below_nose")
    np.testing.assert_array_equal(opened, closed)
    assert closed[-1].mean() > 0.5                      # runs down to the crop's bottom edge


def test_mask_follows_the_head_in_any_region(landmarks):
    for region in ("jaw", "below_nose"):
        here = lower_face_mask(landmarks, (64, 64), 9, 2.0, region=region)
        moved = lower_face_mask(landmarks + (3, 0), (64, 64), 9, 2.0, region=region)
        assert np.abs(moved - here).max() > 0.5


def test_unknown_mask_region_is_a_clear_error(landmarks):
    with pytest.raises(ValueError, match="mask.region must be one of jaw, below_nose"):
        lower_face_mask(landmarks, (64, 64), 9, 2.0, region="lower_half")


def test_mouth_box_holds_the_lips_open_or_closed_inside_the_hidden_region(landmarks):
    def at(mask, i):
        x, y = np.clip(np.round(landmarks[i]).astype(int), 0, 63)
        return mask[y, x]

    box = mouth_box_mask(landmarks, (64, 64))
    assert min(at(box, i) for i in (13, 14, 0, 17, 61, 291)) == 1             # inner and outer lips, corners
    assert max(at(box, i) for i in (33, 263, 152)) == 0                       # eye corners, chin
    assert 0.01 < box.mean() < 0.15                                           # a few latent positions, not the face
    hidden = lower_face_mask(landmarks, (64, 64), 9, 2.0, region="below_nose")
    assert hidden[box > 0].min() > 0.5                                        # weights only what the mask hides
    opened = mouth_box_mask(open_mouth(landmarks, 4), (64, 64))
    assert opened.sum() > box.sum()                                           # it follows this frame's mouth


def test_mouth_box_of_a_frame_without_a_face_is_a_clear_error(landmarks):
    with pytest.raises(ValueError, match="lip landmarks contain NaN"):
        mouth_box_mask(np.full_like(landmarks, np.nan), (64, 64))
