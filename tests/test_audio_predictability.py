"""bench/audio_predictability.py: the linear yardstick for how much of the mouth the audio features predict."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import audio_predictability as ap  # noqa: E402

FRAMES, DIMS, WINDOW = 600, 8, 5
TRAIN, HELD_OUT = (0, 450), (480, 600)


def features_and_opening(seed: int = 0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Random features; the opening is a fixed mix of the frame's and its neighbours' features, plus noise."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(FRAMES, DIMS)).astype(np.float32)
    weights = rng.normal(size=(3, DIMS))
    padded = np.pad(features, ((1, 1), (0, 0)), mode="edge")
    opening = sum(padded[i:i + FRAMES] @ weights[i] for i in range(3)) + noise * rng.normal(size=FRAMES)
    return features, opening


def test_a_linear_mouth_is_predicted_in_sync_on_held_out_frames():
    features, opening = features_and_opening()
    x = ap.window_matrix(features, TRAIN, WINDOW)
    score = ap.held_out_score(x, opening, TRAIN, HELD_OUT, fps=25.0)
    assert score["mouth_open_r"] > 0.95
    assert score["seen_r"] > 0.95
    assert score["av_offset"] == 0
    assert score["fit_seconds"] == pytest.approx(450 / 25, abs=0.1)


def test_features_unrelated_to_the_mouth_predict_nothing():
    features, _ = features_and_opening(seed=0)
    _, opening = features_and_opening(seed=1)
    x = ap.window_matrix(features, TRAIN, WINDOW)
    score = ap.held_out_score(x, opening, TRAIN, HELD_OUT, fps=25.0)
    assert abs(score["mouth_open_r"]) < 0.3
    assert score["seen_r"] > score["mouth_open_r"]          # the map fits noise on the frames it saw


def test_frames_without_a_face_are_left_out_of_the_fit():
    features, opening = features_and_opening()
    opening[100:200] = np.nan
    x = ap.window_matrix(features, TRAIN, WINDOW)
    score = ap.held_out_score(x, opening, TRAIN, HELD_OUT, fps=25.0)
    assert score["mouth_open_r"] > 0.95
    assert score["fit_seconds"] == pytest.approx(350 / 25, abs=0.1)


def test_the_ridge_strength_is_chosen_without_the_held_out_frames():
    features, opening = features_and_opening()
    x = ap.window_matrix(features, TRAIN, WINDOW)
    spoiled = opening.copy()
    spoiled[HELD_OUT[0]:] = np.random.default_rng(2).normal(size=FRAMES - HELD_OUT[0])
    rows = np.arange(*TRAIN)
    assert ap.cross_validated_setting(x[rows], opening[rows]) == ap.cross_validated_setting(x[rows], spoiled[rows])


def test_the_kernel_map_predicts_a_non_linear_mouth_that_the_linear_map_misses():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(FRAMES, DIMS)).astype(np.float32)
    opening = np.abs(features[:, 0]) + 0.05 * rng.normal(size=FRAMES)   # symmetric: no linear trace
    x = ap.window_matrix(features, TRAIN, 1)
    linear = ap.held_out_score(x, opening, TRAIN, HELD_OUT, fps=25.0)
    kernel = ap.held_out_score(x, opening, TRAIN, HELD_OUT, fps=25.0, model="kernel")
    assert abs(linear["mouth_open_r"]) < 0.3
    assert kernel["mouth_open_r"] > 0.6
    assert kernel["model"] == "kernel" and (kernel["kernel_width"], kernel["ridge_strength"]) in ap.KERNEL_SETTINGS
