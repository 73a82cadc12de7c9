"""Weight-free lip-sync metrics: a real (demo) clip's mouth-opening series against shifted and scaled copies of
itself, THEval's metrics on series whose values are worked out by hand, degenerate input, and the evaluation of a
time-split ground truth and of baseline outputs."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dithead.metrics.image import LIP_INDICES
from dithead.metrics.lipsync import (
    LIPSYNC_METRICS,
    frame_rms,
    gt_normalised,
    lip_dynamics,
    lip_sync_metrics,
    mouth_opening,
    silent_frames,
    speech_frames,
    sync_scores,
    theval_lip_sync,
    theval_silent_lip_stability,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_clip(processed_demo):
    """The demo clip's landmarks (crop pixels, 25 fps) and 16 kHz audio; its mouth opens with its syllables."""
    import soundfile as sf

    from dithead.data.store import ProcessedClip

    clip = ProcessedClip(processed_demo / "data" / "processed" / "astronaut")
    audio, rate = sf.read(clip.audio_path, dtype="float32")
    return np.asarray(clip.landmarks), audio, rate


@pytest.fixture(scope="module")
def opening(demo_clip) -> np.ndarray:
    series = mouth_opening(demo_clip[0])
    assert np.isfinite(series).all() and np.std(series) > 0.01        # a face in every frame, a moving mouth
    return series


def delayed(series: np.ndarray, frames: int) -> np.ndarray:
    """``series`` shown ``frames`` later: out[k] = series[k - frames] (NaN before the start)."""
    return np.concatenate([np.full(frames, np.nan), series[:-frames]])


# --------------------------------------------------------------------------- mouth opening against the truth


def test_mouth_opening_against_itself_is_perfectly_correlated_and_in_sync(opening):
    scores = sync_scores(opening, opening)
    assert scores["mouth_open_r"] == pytest.approx(1.0)
    assert scores["av_offset"] == 0 and scores["mouth_open_std_ratio"] == pytest.approx(1.0)
    assert scores["mouth_open_mean"] == pytest.approx(opening.mean())
    assert scores["mouth_closed_level"] == pytest.approx(np.percentile(opening, 10))


def test_a_delayed_mouth_gives_the_delay_as_offset(opening):
    assert sync_scores(delayed(opening, 3), opening)["av_offset"] == 3       # generated lags the truth by 3 frames
    assert sync_scores(opening, delayed(opening, 3))["av_offset"] == -3      # generated is 3 frames early
    assert sync_scores(delayed(opening, 2), opening, max_offset=1)["av_offset"] != 2   # outside the search


def test_a_half_amplitude_mouth_has_half_the_std_and_full_correlation(opening):
    closed = opening.min()
    scores = sync_scores(closed + 0.5 * (opening - closed), opening)
    assert scores["mouth_open_std_ratio"] == pytest.approx(0.5)
    assert scores["mouth_open_r"] == pytest.approx(1.0)
    assert scores["mouth_open_mean"] < opening.mean()


def test_mouth_opening_is_the_same_in_any_pixel_frame(demo_clip):
    landmarks = demo_clip[0]
    moved = landmarks.astype(np.float64) * 3.5 + 40
    assert mouth_opening(moved) == pytest.approx(mouth_opening(landmarks), rel=1e-6)
    assert lip_dynamics(moved) == pytest.approx(lip_dynamics(landmarks), rel=1e-6)


# --------------------------------------------------------------------------- THEval metrics by hand


def test_theval_lip_sync_compares_min_max_normalised_openness_and_loudness_over_speech():
    openness = np.array([1, 2, 3, 5, np.nan, 9.0])
    rms = np.array([0, 1, 4, 2, 3, 100.0])
    speech = np.array([1, 1, 1, 1, 1, 0], bool)
    # Frames 0-3 (4 has no face, 5 no speech): openness -> 0, .25, .5, 1; RMS -> 0, .25, 1, .5.
    assert theval_lip_sync(openness, rms, speech) == pytest.approx(0.25)
    # A mouth frozen during speech: its min-max series is 0, far from the loudness (0, .5, 1).
    assert theval_lip_sync(np.full(3, 2.0), np.array([0, 1, 2.0]), np.ones(3, bool)) == pytest.approx(0.5)
    # Speech in under 10% of the frames: undefined.
    assert math.isnan(theval_lip_sync(np.arange(11.0), np.arange(11.0), np.arange(11) == 0))


def test_theval_silent_lip_stability_is_the_median_deviation_over_silent_frames():
    gap = np.array([1, 2, 3, 10, np.nan, 100.0])
    silent = np.array([1, 1, 1, 1, 1, 0], bool)
    # Values 1, 2, 3, 10: mean 4, deviations 3, 2, 1, 6, median 2.5.
    assert theval_silent_lip_stability(gap, silent) == pytest.approx(2.5)


def test_silence_is_a_pause_of_at_least_0_3_seconds():
    speech = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1], bool)
    # At 10 fps, 0.3 s is 3 frames: the 2-frame pause is between words, the 4-frame one is silence.
    assert silent_frames(speech, fps=10).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0]


def test_theval_lip_dynamics_is_the_mean_std_of_lip_distances_in_face_units():
    landmarks = np.zeros((2, 468, 2), np.float32)
    landmarks[:, 263] = [10, 0]                       # eye corners 10 px apart: the face unit
    landmarks[1, LIP_INDICES[0]] = [10, 0]            # one lip point moves 1 face unit away from the 39 others
    # 39 of the 780 point pairs have distances (0, 1) over time, std 0.5; the others stay 0.
    assert lip_dynamics(landmarks) == pytest.approx(39 * 0.5 / 780)


def test_frame_rms_cuts_one_window_per_video_frame():
    samples = np.full(1050, 0.5, np.float32)                     # 1.05 s at 1 kHz
    rms = frame_rms(samples, sample_rate=1000, fps=10, n_frames=12)
    assert rms[:11] == pytest.approx(np.full(11, 0.5))           # frame 10 has its first 50 samples
    assert np.isnan(rms[11])                                     # past the audio's end


def test_gt_normalised_score_is_one_for_the_ground_truth_itself():
    assert gt_normalised(0.3, 0.3) == 1.0
    assert gt_normalised(2.0, 4.0) == 0.5 and gt_normalised(6.0, 4.0) == 0.5
    assert math.isnan(gt_normalised(1.0, 0.0)) and math.isnan(gt_normalised(math.nan, 1.0))


def test_overall_theval_scores_compare_the_means_over_clips_as_theval_does():
    from dithead.metrics.evaluation import PairEvaluation, summarise

    def clip(generated: float, truth: float, offset: int) -> PairEvaluation:
        metrics = {"theval_lip_sync": generated, "theval_lip_sync_gt": truth,
                   "theval_lip_sync_score": gt_normalised(generated, truth), "av_offset": offset}
        return PairEvaluation({"metrics": metrics, "missing": {}, "frames": {"compared": 10}}, {})

    overall = summarise({"a": clip(0.3, 0.1, 2), "b": clip(0.1, 0.3, 0)})["metrics"]
    # Clip scores -1 and 1/3; but the means are equal (0.2 and 0.2), and THEval scores the means: 1.
    assert overall["theval_lip_sync_score"] == pytest.approx(1.0)
    assert overall["theval_lip_sync"] == pytest.approx(0.2) and overall["av_offset"] == 1.0


def test_every_theval_score_of_the_ground_truth_against_itself_is_one(demo_clip):
    landmarks, audio, rate = demo_clip
    metrics, per_frame = lip_sync_metrics(landmarks, landmarks, audio, audio, rate, fps=25)
    scores = {name: value for name, value in metrics.items() if name.endswith("_score")}
    assert {"theval_lip_dynamics_score", "theval_silent_lip_stability_score"} <= set(scores)
    assert all(value == pytest.approx(1.0) for value in scores.values() if math.isfinite(value))
    assert set(metrics) == set(LIPSYNC_METRICS)
    assert per_frame["mouth_open"] == pytest.approx(per_frame["mouth_open_gt"])


def test_real_speech_is_found_by_the_bundled_vad_at_any_sample_rate(shared_clips):
    from dithead.data.audio import load_audio

    speech = load_audio(shared_clips / "yongen.wav", 16000, peak_normalise=False).samples
    n = int(len(speech) / 16000 * 25)
    found = speech_frames(speech, 16000, 25, n)
    assert 0.3 < found.mean() < 0.95                     # a talk with pauses
    resampled = load_audio(shared_clips / "yongen.wav", 44100, peak_normalise=False).samples
    assert np.mean(speech_frames(resampled, 44100, 25, n) == found) > 0.95
    assert not speech_frames(np.zeros(16000, np.float32), 16000, 25, 25).any()


def test_the_vad_leaves_torch_on_every_thread_it_had():
    # silero_vad's import sets one thread for the whole process; a bench that evaluates and then samples
    # again would go on at a fraction of its speed. A fresh process: the import happens inside the call.
    script = ("import numpy as np, torch; torch.set_num_threads(2); "
              "from dithead.metrics.lipsync import speech_frames; "
              "speech_frames(np.random.default_rng(0).normal(size=16000).astype(np.float32), 16000, 25, 25); "
              "print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-1] == "2"


# --------------------------------------------------------------------------- degenerate input


def test_degenerate_series_give_nan_never_an_exception():
    nan = np.full(10, np.nan)
    assert all(math.isnan(v) for v in sync_scores(nan, nan).values())
    assert all(math.isnan(v) for v in sync_scores(np.array([0.1, 0.2]), np.array([0.1, 0.3])).values())
    flat = sync_scores(np.linspace(0, 1, 10), np.full(10, 0.2))           # the truth's mouth never moves
    assert math.isnan(flat["mouth_open_r"]) and math.isnan(flat["av_offset"])
    assert math.isnan(flat["mouth_open_std_ratio"])
    assert math.isnan(theval_lip_sync(np.array([]), np.array([]), np.array([], bool)))
    assert math.isnan(theval_silent_lip_stability(np.array([1.0]), np.array([True])))


def test_no_face_and_no_audio_give_nan_and_no_audio_metrics():
    no_face = np.full((12, 468, 2), np.nan, np.float32)
    metrics, per_frame = lip_sync_metrics(no_face, no_face, None, None, 16000, 25)
    assert all(math.isnan(v) for v in metrics.values())
    assert "theval_lip_sync" not in metrics and "speech_fraction" not in metrics
    assert np.isnan(per_frame["mouth_open"]).all()
    empty = np.zeros((0, 468, 2), np.float32)
    metrics, _ = lip_sync_metrics(empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32), 16000, 25)
    assert all(math.isnan(v) for v in metrics.values())


# --------------------------------------------------------------------------- evaluation of videos


@pytest.fixture(scope="module")
def talking_video(tmp_path_factory) -> Path:
    """2 s of the bundled demo face (30 fps, 320x320) with its audio track."""
    from dithead.data.demo_clips import CLIPS, render_clip

    return render_clip(CLIPS[0], tmp_path_factory.mktemp("video"), seconds=2.0)


@pytest.fixture(scope="module")
def evaluator():
    from dithead.metrics.evaluation import EvalConfig, Evaluator

    return Evaluator({}, EvalConfig(metrics=["lmd"], crop_size=64, smooth_frames=3))


def test_a_time_split_ground_truth_shows_as_the_offset(talking_video, evaluator):
    same = evaluator.evaluate(talking_video, talking_video)
    assert same.report["metrics"]["mouth_open_r"] == pytest.approx(1.0)
    assert same.report["metrics"]["av_offset"] == 0
    assert len(same.per_frame["mouth_open"]) == same.report["frames"]["compared"] == 50

    split = evaluator.evaluate(talking_video, talking_video, gt_start=3).report
    # Generated frame k is video frame k; ground-truth frame k is video frame k + 3. So generated[k] =
    # truth[k - 3]: the generated mouth lags the ground truth's by 3 frames, av_offset +3.
    assert split["metrics"]["av_offset"] == 3
    assert split["frames"]["ground_truth_start"] == 3
    assert split["frames"]["ground_truth"] == split["frames"]["compared"] == 47


def test_baselines_are_summarised_apart_from_the_generated_videos(talking_video, tmp_path):
    from dithead.data.audio import write_wav
    from dithead.metrics.evaluation import EvalConfig, evaluate_samples

    samples, raw = tmp_path / "samples", tmp_path / "raw"
    samples.mkdir()
    raw.mkdir()
    shutil.copy(talking_video, raw / "talk.mp4")
    write_wav(raw / "talk.wav", np.zeros(32000, np.float32), 16000)         # a wav beside it replaces its track
    shutil.copy(talking_video, samples / "talk.mp4")                       # no entry: clip "talk", generated
    shutil.copy(talking_video, samples / "talk__silence.mp4")              # stands in for a silent output
    shutil.copy(talking_video, samples / "odd.mp4")
    (samples / "report.json").write_text(json.dumps({
        "talk__silence.mp4": {"clip": "talk", "start_frame": 2, "variant": "silence", "frames": 48},
        "odd.mp4": {"clip": "talk", "variant": "upside_down"},
        "dubbed/talk__other.mp4": {"clip": "talk"},                       # not top-level: not evaluated
    }))
    evaluation = evaluate_samples(samples, raw, {}, EvalConfig(metrics=["lmd"], crop_size=64, smooth_frames=3,
                                                                max_frames=20))
    summary = evaluation.metrics_json()
    assert summary["overall"]["clips"] == 1 and summary["overall"]["mouth_open_r"] == pytest.approx(1.0)
    assert list(summary["baselines"]) == ["silence"] and summary["baselines"]["silence"]["av_offset"] == 2
    assert set(summary["clips"]) == {"talk", "talk__silence"} and "upside_down" in summary["failed"]["odd"]
    assert evaluation.results["talk"].report["ground_truth_audio"] == str(raw / "talk.wav")
    assert summary["clips"]["talk"]["speech_fraction_gt"] == 0                # the wav is silent
    for numbers in [summary["overall"], *summary["baselines"].values(), *summary["clips"].values()]:
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers.values())


def test_the_evaluate_stage_plots_both_mouth_curves(tmp_path):
    from dvclive import Live

    stage = runpy.run_path(str(REPO / "stages" / "evaluate.py"))
    live = Live(str(tmp_path), dvcyaml=None, save_dvc_exp=False, report=None)
    stage["log_mouth_plot"](live, "talk", {"mouth_open": np.array([0.1, np.nan, 0.3]),
                                           "mouth_open_gt": np.array([0.2, 0.2, 0.4])})
    points = json.loads((tmp_path / "plots" / "custom" / "mouth_open_talk.json").read_text())
    assert [(p["frame"], p["mouth_open"], p["mouth_open_gt"]) for p in points] == [(0, 0.1, 0.2), (2, 0.3, 0.4)]
