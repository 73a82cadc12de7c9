"""Evaluation metrics: hand-computed values, the pretrained networks' code paths on tiny random
checkpoints saved in the real files' formats, missing-weights reporting, and whole-video evaluation."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from dithead.metrics import fid, syncnet
from dithead.metrics.image import LIP_INDICES, mouth_box, psnr, ssim
from dithead.metrics.landmarks import frame_lmd, lmd
from dithead.metrics.weights import WeightsFormatError
from dithead.models import lpips as lpips_module
from dithead.models.lpips import LPIPS, MissingWeightsError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    """Random networks saved like the real checkpoints, as a params.yaml ``weights:`` section."""
    root = tmp_path_factory.mktemp("weights")
    backbone, linear = lpips_module.random_checkpoints(0)
    files = {
        "lpips_backbone": (root / "alexnet-owt-7be5be79.pth", backbone),
        "lpips_linear": (root / "alex.pth", linear),
        "inception_fid": (root / "pt_inception-2015-12-05-6726825d.pth", fid.random_checkpoint(0)),
        "syncnet": (root / "syncnet_v2.model", syncnet.random_checkpoint(0)),
    }
    for key, (path, state) in files.items():
        # The AlexNet and SyncNet files date from 2017: torch's legacy (non-zip) format.
        torch.save(state, path, _use_new_zipfile_serialization=key not in ("lpips_backbone", "syncnet"))
    return {key: str(path) for key, (path, _) in files.items()}


# --------------------------------------------------------------------------- PSNR, SSIM, LMD by hand


def test_psnr_identical_is_infinite_and_known_differences_match_the_formula():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert psnr(image, image) == math.inf
    assert psnr(np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8, 3), np.uint8)) == pytest.approx(0.0)
    one_off = np.full((8, 8, 3), 101, np.uint8)
    assert psnr(one_off, np.full((8, 8, 3), 100, np.uint8)) == pytest.approx(20 * math.log10(255), abs=1e-9)


def test_psnr_of_gaussian_noise_matches_its_variance():
    rng = np.random.default_rng(1)
    sigma = 5.0
    gt = np.full((256, 256, 3), 128, np.uint8)
    noisy = np.clip(np.round(128 + rng.normal(0, sigma, gt.shape)), 0, 255).astype(np.uint8)
    # Rounding to integers adds the variance of a uniform error, 1/12.
    expected = 10 * math.log10(255 ** 2 / (sigma ** 2 + 1 / 12))
    assert psnr(noisy, gt) == pytest.approx(expected, abs=0.05)


def test_ssim_identical_is_one_and_constant_images_follow_the_luminance_term():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    a, b, c1 = 100.0, 110.0, (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a ** 2 + b ** 2 + c1)   # no variance: contrast/structure terms are 1
    assert ssim(np.full((32, 32, 3), 110, np.uint8), np.full((32, 32, 3), 100, np.uint8)) == pytest.approx(expected)


def wang_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM as Wang et al. (2004) define it, written out: 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
    K2 = 0.03, L = 255, population (co)variances, the mean over valid windows and over channels."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch].astype(np.float64), y[..., ch].astype(np.float64)
        blur = lambda img: gaussian_filter(img, 1.5, truncate=3.5)[5:-5, 5:-5]   # noqa: E731  (valid windows)
        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
        ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        values.append(ssim_map.mean())
    return float(np.mean(values))


def test_ssim_on_a_textured_pair_matches_the_definition():
    """A textured image against a blurred, noisier copy: a wrong window, sigma, covariance or data range
    moves the value by far more than the tolerance."""
    import cv2

    rng = np.random.default_rng(4)
    gt = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
    pred = np.clip(cv2.GaussianBlur(gt, (5, 5), 1.2).astype(np.float64) + rng.normal(0, 25, gt.shape), 0, 255)
    pred = pred.round().astype(np.uint8)
    expected = wang_ssim(pred, gt)
    assert 0.3 < expected < 0.9                    # a pair where every term of SSIM matters
    assert ssim(pred, gt) == pytest.approx(expected, abs=1e-6)   # sample covariance would move it by 3e-5


def test_lmd_is_zero_for_identical_and_the_shift_for_shifted_landmarks():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0, 64, (468, 2)).astype(np.float32)
    assert frame_lmd(gt, gt) == 0.0
    assert frame_lmd(gt + np.float32([3, 4]), gt) == pytest.approx(5.0)
    mean, per_frame = lmd([gt, gt + np.float32([0, 2]), None], [gt, gt, gt])
    assert per_frame[:2] == pytest.approx([0.0, 2.0])
    assert math.isnan(per_frame[2])
    assert mean == pytest.approx(1.0)


def test_lmd_uses_only_the_lip_points():
    gt = np.zeros((468, 2), np.float32)
    moved = gt.copy()
    others = np.setdiff1d(np.arange(468), LIP_INDICES)
    moved[others] += 10
    assert frame_lmd(moved, gt) == 0.0


def test_mouth_box_surrounds_the_lips_and_is_none_without_landmarks():
    landmarks = np.full((468, 2), 5.0, np.float32)
    landmarks[LIP_INDICES] = np.random.default_rng(4).uniform([20, 40], [44, 50], (len(LIP_INDICES), 2))
    x0, y0, x1, y1 = mouth_box(landmarks, 64, margin=0.4)
    lips = landmarks[LIP_INDICES]
    assert x0 <= lips[:, 0].min() and x1 >= lips[:, 0].max()
    assert y0 <= lips[:, 1].min() and y1 >= lips[:, 1].max()
    assert mouth_box(np.full((468, 2), np.nan, np.float32), 64, 0.4) is None


# --------------------------------------------------------------------------- LPIPS


def reference_lpips(backbone: dict, linear: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The lpips package's procedure written out with functional ops from the two state dicts."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def relus(image):
        w = lambda i: (backbone[f"features.{i}.weight"], backbone[f"features.{i}.bias"])  # noqa: E731
        h1 = F.relu(F.conv2d((image - shift) / scale, *w(0), stride=4, padding=2))
        h2 = F.relu(F.conv2d(F.max_pool2d(h1, 3, 2), *w(3), padding=2))
        h3 = F.relu(F.conv2d(F.max_pool2d(h2, 3, 2), *w(6), padding=1))
        h4 = F.relu(F.conv2d(h3, *w(8), padding=1))
        return [h1, h2, h3, h4, F.relu(F.conv2d(h4, *w(10), padding=1))]

    total = 0
    for k, (fx, fy) in enumerate(zip(relus(x), relus(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((nx - ny) ** 2, linear[f"lin{k}.model.1.weight"]).mean(dim=(2, 3))
    return total[:, 0]


def test_lpips_loads_the_checkpoint_formats_and_follows_the_reference_procedure(weight_files):
    model = LPIPS(weight_files["lpips_backbone"], weight_files["lpips_linear"])
    backbone = torch.load(weight_files["lpips_backbone"], weights_only=True)
    linear = torch.load(weight_files["lpips_linear"], weights_only=True)
    assert any(k.startswith("classifier.") for k in backbone)   # torchvision's full AlexNet file
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(2, 3, 64, 64, generator=g)).clamp(-1, 1)
    distance = model(x, y)
    assert distance.shape == (2,)
    assert torch.allclose(distance, reference_lpips(backbone, linear, x, y), rtol=1e-4, atol=1e-6)
    assert torch.all(distance > 0)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-6)


def test_lpips_is_a_frozen_differentiable_loss():
    model = LPIPS.random_init(seed=1)
    assert not any(p.requires_grad for p in model.parameters())
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    model(x, torch.zeros(1, 3, 64, 64)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_lpips_names_the_params_key_when_weights_are_missing(weight_files, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"weights\.lpips_backbone is empty"):
        LPIPS("", weight_files["lpips_linear"])
    with pytest.raises(MissingWeightsError, match=r"weights\.lpips_linear points to .*nope\.pth, which does not exist"):
        LPIPS(weight_files["lpips_backbone"], tmp_path / "nope.pth")
    with pytest.raises(WeightsFormatError, match=r"alex\.pth: does not match the network: missing features\.0\.weight"):
        LPIPS(weight_files["lpips_linear"], weight_files["lpips_linear"])


# --------------------------------------------------------------------------- FID


def test_frechet_distance_matches_the_closed_form_for_known_statistics():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    var1, var2 = np.array([4.0, 1.0]), np.array([1.0, 9.0])
    expected = 9.0 + (2 - 1) ** 2 + (1 - 3) ** 2          # |mu1 - mu2|^2 + sum (sqrt v1 - sqrt v2)^2
    assert fid.frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected)


@pytest.mark.parametrize("n1, n2, dim", [(30, 37, 40), (300, 370, 40)])
def test_frechet_distance_of_features_equals_pytorch_fid_formula(n1, n2, dim):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((n1, dim))
    b = rng.standard_normal((n2, dim)) * 1.3 + 0.1
    reference = fid.frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_inception_loads_the_checkpoint_format_and_gives_pool_features(weight_files):
    state = torch.load(weight_files["inception_fid"], weights_only=True)
    assert state["fc.weight"].shape == (1008, 2048) and "Mixed_7c.branch_pool.conv.weight" in state
    net = fid.load_fid_inception(weight_files["inception_fid"])
    images = np.random.default_rng(6).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    features = fid.inception_features(net, images)
    assert features.shape == (2, fid.FEATURE_DIM) and np.isfinite(features).all()
    # Evaluation mode: an image's features do not depend on the rest of its batch.
    # float32 through ~90 layers; batch sizes 1 and 2 round differently by CPU: 1e-4 of the feature scale.
    scale = max(1.0, float(np.abs(features).max()))
    assert np.allclose(fid.inception_features(net, images[:1]), features[:1], rtol=0, atol=1e-4 * scale)
    with pytest.raises(MissingWeightsError, match=r"weights\.inception_fid is empty"):
        fid.load_fid_inception("")


def test_fid_inception_features_equal_pytorch_fids(tmp_path):
    """The same checkpoint through pytorch-fid's InceptionV3 (its resize and scaling included) gives the same
    features. A random checkpoint is enough to tell the blocks apart: averaging with the padded zeros, as
    torchvision's blocks do, moves features by ~0.08 where this allows 1e-4."""
    import os
    import subprocess
    import sys

    reference = REPO / ".venv" / "reference"
    if not (reference / "pytorch_fid").is_dir():
        message = f"{reference} has no pytorch-fid (make setup installs requirements-reference.txt there)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    torch.save(fid.random_checkpoint(0), tmp_path / "inception.pth")
    images = np.random.default_rng(6).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "PYTHONPATH": str(reference), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "tests" / "reference" / "pytorch_fid_features.py"),
                    str(tmp_path / "inception.pth"), str(tmp_path / "images.npy"), str(tmp_path / "expected.npy")],
                   env=env, check=True, capture_output=True)
    expected = np.load(tmp_path / "expected.npy")
    ours = fid.inception_features(fid.load_fid_inception(tmp_path / "inception.pth"), images)
    assert expected.shape == ours.shape == (3, fid.FEATURE_DIM)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


# --------------------------------------------------------------------------- SyncNet, LSE-C / LSE-D


def test_mfcc_equals_python_speech_features():
    t = np.arange(1600) / 16000
    signal = np.round(8000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * 1800 * t))
    cepstra = syncnet.mfcc(signal, 16000)
    # Values of python_speech_features 0.6 `mfcc(signal, 16000)` for this int16 signal.
    expected = np.array([[20.220108991645, 7.612988238723, -15.179776935471, -10.586130121661, 33.510583313902],
                         [20.228636084832, 29.605462744698, -34.924969436933, -11.392551392141, 32.593066047531],
                         [20.000822380982, 10.585896149795, -17.402694483831, -11.395593245702, 29.87477481191]])
    assert cepstra.shape == (9, 13)
    assert cepstra[[0, 4, 8]][:, [0, 1, 2, 7, 12]] == pytest.approx(expected, abs=1e-8)


def test_sync_scores_find_the_offset_and_follow_the_syncnet_python_definitions():
    rng = np.random.default_rng(7)
    n, delay, vshift = 30, 2, 3
    lip = torch.from_numpy(rng.standard_normal((n, 8))).float()
    aud = torch.from_numpy(rng.standard_normal((n, 8))).float()
    aud[delay:] = lip[:-delay]                       # the audio embedding of frame i + delay matches lip i
    scores = syncnet.sync_scores(lip, aud, vshift)
    assert scores.offset == -delay                   # syncnet_python's sign: vshift - argmin
    # At the best offset every frame matches except the last `delay`, which meet the zero padding.
    by_hand = float(lip[-delay:].norm(dim=1).sum()) / n
    assert scores.lse_d == pytest.approx(by_hand, abs=1e-4)
    assert scores.lse_c == pytest.approx(float(np.median(scores.mean_distances)) - scores.lse_d, abs=1e-5)
    assert scores.mean_distances.argmin() == vshift + delay


def test_syncnet_crop_cuts_syncnet_python_region_in_bgr():
    frame = np.zeros((400, 400, 3), np.uint8)
    cx, cy, side = 200.0, 150.0, 100.0
    bs = side / 2
    # Rows cy - bs .. cy + 1.8 bs, columns cx ± 1.4 bs, red in RGB.
    frame[int(cy - bs):int(cy + 1.8 * bs), int(cx - 1.4 * bs):int(cx + 1.4 * bs)] = (255, 0, 0)
    crop = syncnet.syncnet_crop(frame, np.array([cx, cy, side]))
    assert crop.shape == (224, 224, 3)
    assert np.all(crop[2:-2, 2:-2] == (0, 0, 255))
    outside = syncnet.syncnet_crop(frame, np.array([-500.0, -500.0, 50.0]))
    assert np.all(outside == syncnet.PAD_VALUE)


def test_syncnet_loads_its_checkpoint_and_scores_windows(weight_files):
    net = syncnet.load_syncnet(weight_files["syncnet"])
    scorer = syncnet.SyncNetScorer(net, batch_size=4, vshift=2)
    rng = np.random.default_rng(8)
    for _ in range(7):
        scorer.add_frame(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    scores = scorer.scores(rng.uniform(-0.5, 0.5, 7 * 640).astype(np.float32))
    assert scores.windows == 2                       # syncnet_python: min(frames, audio / 640) - 5
    assert scores.mean_distances.shape == (5,)
    assert np.isfinite([scores.lse_d, scores.lse_c]).all() and scores.lse_c >= 0
    with pytest.raises(MissingWeightsError, match=r"weights\.syncnet points to"):
        syncnet.load_syncnet("/nonexistent/syncnet_v2.model")


# --------------------------------------------------------------------------- whole videos


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """1.2 s of the bundled demo face (30 fps, 320x320, audio) and variants of it."""
    from dithead.data.demo_clips import CLIPS, render_clip
    from dithead.inference.video_writer import write_video
    from dithead.data.video_reader import iter_frames

    root = tmp_path_factory.mktemp("videos")
    gt = render_clip(CLIPS[0], root / "raw", seconds=1.2)
    frames = [f.image for f in iter_frames(gt, fps=25)]
    shift = np.float32([[1, 0, 4], [0, 1, 0]])
    paths = {"gt": gt, "shifted": root / "shifted.mp4", "large": root / "large.mp4", "noface": root / "noface.mp4"}
    write_video(paths["shifted"], [cv2.warpAffine(f, shift, (320, 320), borderMode=cv2.BORDER_REFLECT) for f in frames],
                25, audio=gt)
    write_video(paths["large"], [cv2.resize(f, (640, 640), interpolation=cv2.INTER_CUBIC) for f in frames[:20]], 25)
    noise = np.random.default_rng(9).integers(100, 140, (len(frames), 320, 320, 3), dtype=np.uint8)
    write_video(paths["noface"], list(noise), 25, audio=gt)
    return paths


FAST = dict(crop_size=64, smooth_frames=3, batch_size=8)


def test_a_video_against_itself_is_perfect_and_says_psnr_was_capped(videos, weight_files):
    from dithead.metrics.evaluation import evaluate_videos

    report = evaluate_videos(videos["gt"], videos["gt"], weight_files, max_frames=10,
                             metrics=["psnr", "ssim", "lpips", "lmd", "mouth_psnr", "mouth_ssim"], **FAST)
    m = report["metrics"]
    assert m["psnr"] == 100.0 and m["mouth_psnr"] == 100.0
    assert report["frames"]["psnr_capped"] == 10 and "infinite" in report["notes"]["psnr"]
    assert m["ssim"] == pytest.approx(1.0) and m["mouth_ssim"] == pytest.approx(1.0)
    assert m["lmd"] == 0.0 and m["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert report["frames"]["compared"] == 10 and report["frames"]["ground_truth_without_face"] == 0
    assert report["missing"] == {}


def test_a_shifted_video_has_the_shift_as_lmd_in_crop_pixels(videos):
    from dithead.metrics.evaluation import EvalConfig, evaluate_videos, track_faces

    cfg = EvalConfig(max_frames=10, **FAST)
    boxes = track_faces(videos["gt"], None, cfg, "ground truth").smoothed_boxes(cfg.smooth_frames)
    crop_side = np.mean([round(side * (1 + cfg.crop_margin)) for side in boxes[:, 2]])
    report = evaluate_videos(videos["shifted"], videos["gt"], {}, max_frames=10,
                             metrics=["psnr", "ssim", "lmd"], **FAST)
    expected = 4 * cfg.crop_size / crop_side             # 4 source pixels, in crop pixels
    assert report["metrics"]["lmd"] == pytest.approx(expected, rel=0.1)
    assert report["metrics"]["psnr"] < 30 and report["metrics"]["ssim"] < 0.95
    assert report["crop"]["boxes"] == "ground truth's boxes for both videos"


def test_different_resolution_and_length_are_aligned_in_time(videos):
    from dithead.metrics.evaluation import evaluate_videos

    report = evaluate_videos(videos["large"], videos["gt"], {}, metrics=["psnr", "lmd"], **FAST)
    frames = report["frames"]
    assert frames["generated"] == 20 and frames["ground_truth"] == 30
    assert frames["compared"] == 20 and frames["overlap_seconds"] == pytest.approx(0.8)
    assert frames["ground_truth_source_fps"] == pytest.approx(30.0)
    assert report["crop"]["generated_resized_from"] == [640, 640]
    assert report["metrics"]["psnr"] > 30 and report["metrics"]["lmd"] < 1.5


def test_missing_faces_are_reported_clearly(videos):
    from dithead.metrics.evaluation import EvaluationError, evaluate_videos

    with pytest.raises(EvaluationError, match=r"noface\.mp4: no face found in any of the \d+ frames of the ground"):
        evaluate_videos(videos["gt"], videos["noface"], {}, max_frames=8, metrics=["psnr"], **FAST)
    report = evaluate_videos(videos["noface"], videos["gt"], {}, max_frames=8, metrics=["psnr", "lmd"], **FAST)
    assert report["frames"]["generated_without_face"] == 8
    assert "lmd" not in report["metrics"] and "no face found" in report["missing"]["lmd"]
    assert "psnr" in report["metrics"]     # the ground truth's boxes still place the crop


def test_every_pretrained_metric_runs_from_its_checkpoint_or_is_reported_missing(videos, weight_files):
    from dithead.metrics.evaluation import evaluate_videos

    full = evaluate_videos(videos["shifted"], videos["gt"], weight_files, max_frames=7, syncnet_vshift=2, **FAST)
    assert set(full["metrics"]) >= {"psnr", "ssim", "lpips", "fid", "lse_c", "lse_d", "lmd", "mouth_psnr", "mouth_ssim"}
    assert full["missing"] == {} and "windows of 5 frames" in full["notes"]["lse"]
    assert np.isfinite(list(full["metrics"].values())).all()

    bare = evaluate_videos(videos["shifted"], videos["gt"], {"inception_fid": "", "syncnet": "/nope/syncnet_v2.model"},
                           max_frames=7, **FAST)
    for metric, key in [("lpips", "weights.lpips_backbone"), ("fid", "weights.inception_fid"),
                        ("lse_c", "weights.syncnet"), ("lse_d", "weights.syncnet")]:
        assert metric not in bare["metrics"]
        assert key in bare["missing"][metric] and "set " in bare["missing"][metric]
    assert {"psnr", "ssim", "lmd"} <= set(bare["metrics"])


def test_evaluate_stage_writes_metrics_plots_and_side_by_side(videos, tmp_path, monkeypatch):
    import shutil

    (tmp_path / "outputs/samples").mkdir(parents=True)
    (tmp_path / "data/raw").mkdir(parents=True)
    shutil.copy(videos["gt"], tmp_path / "data/raw/astronaut.mp4")
    shutil.copy(videos["shifted"], tmp_path / "outputs/samples/astronaut.mp4")
    shutil.copy(videos["shifted"], tmp_path / "outputs/samples/unknown.mp4")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(metrics=["psnr", "ssim", "lmd", "fid"], max_frames=8, **FAST)
    params["weights"] = {key: "" for key in params["weights"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    assert runpy.run_path(str(REPO / "stages/evaluate.py"))["main"]() == 0

    summary = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert set(summary["overall"]) >= {"psnr", "ssim", "lmd", "frames", "clips"}
    assert summary["clips"]["astronaut"]["frames"] == 8
    report = json.loads((tmp_path / "outputs/eval/report.json").read_text())    # explanations: not metrics
    assert "weights.inception_fid" in report["missing"]["fid"]
    assert "no ground-truth video" in report["failed"]["unknown"]
    assert set(summary) == {"overall", "baselines", "clips"}
    plot = json.loads((tmp_path / "dvclive/evaluate/plots/custom/psnr_astronaut.json").read_text())
    assert [p["frame"] for p in plot] == list(range(8))
    assert (tmp_path / "dvclive/evaluate/plots/custom/lmd_astronaut.json").is_file()
    from dithead.data.video_reader import probe_video

    side = probe_video(tmp_path / "outputs/eval/astronaut_side_by_side.mp4")
    assert (side.width, side.height, side.n_frames) == (3 * 64, 64, 8)


def test_evaluate_command_scores_a_pair_and_writes_the_report(videos, weight_files, tmp_path, capsys):
    import argparse

    from dithead.metrics.cli import add_evaluate_parser

    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers())
    out = tmp_path / "metrics.json"
    args = parser.parse_args(["evaluate", "--pred", str(videos["gt"]), "--gt", str(videos["gt"]), "--out", str(out),
                              "--metrics", "psnr", "ssim", "lmd", "lpips", "--max-frames", "5", "--crop-size", "64",
                              "--params", str(tmp_path / "absent.yaml"), "--device", "cpu",
                              "--lpips-backbone", weight_files["lpips_backbone"]])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["psnr"] == 100.0 and report["metrics"]["lmd"] == 0.0
    assert "weights.lpips_linear is empty" in report["missing"]["lpips"]
    printed = capsys.readouterr().out
    assert "5 frames at 25 fps" in printed and "counted as 100 dB" in printed and "weights.lpips_linear" in printed


def test_box_smoothing_averages_found_faces_and_fills_gaps_from_the_nearest():
    from dithead.metrics.evaluation import smooth_boxes

    raw = np.array([[10, 10, 4], [np.nan] * 3, [20, 10, 4], [np.nan] * 3, [np.nan] * 3, [np.nan] * 3], np.float32)
    smoothed = smooth_boxes(raw, window=3)
    assert smoothed[:, 0] == pytest.approx([10, 15, 20, 20, 20, 20])    # frame 4 and 5: nearest smoothed box
    assert smooth_boxes(raw[:2], window=9)[:, 0] == pytest.approx([10, 10])   # window longer than the clip
    assert smooth_boxes(np.full((3, 3), np.nan, np.float32), window=3) is None


def test_box_smoothing_memory_grows_with_frames_not_their_square():
    """A frames x frames table is 1.8 GB for 10 minutes at 25 fps; 5000 frames show it (200 MB) without harm."""
    import tracemalloc

    from dithead.metrics.evaluation import smooth_boxes

    n = 5000
    raw = np.tile(np.float32([100, 80, 40]), (n, 1))
    raw[1000:1400] = np.nan                                 # face lost for 16 s: filled from both sides
    raw[1400:] = [120, 80, 40]
    tracemalloc.start()
    smoothed = smooth_boxes(raw, window=5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * n * 8                                # a few arrays of N rows (2 MB), not N x N
    assert smoothed[1100, 0] == pytest.approx(100) and smoothed[1300, 0] == pytest.approx(120)
    assert np.isfinite(smoothed).all()
