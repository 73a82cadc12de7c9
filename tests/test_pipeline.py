"""The DVC pipeline run as a user runs it: `dithead demo-data`, `dithead profile smoke`, `dvc repro`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import copy_project, run_cli
from dithead.data.store import list_clips
from dithead.data.video_reader import iter_source_frames
from dithead.inference.watermark import DETECTION_THRESHOLD, detect_frames, detect_video

pytestmark = pytest.mark.slow

STAGES = ["preprocess", "extract_audio_features", "train_vqgan_masked", "train_vqgan_gt", "train_dit", "sample",
          "interpolate", "evaluate"]


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory):
    """The whole smoke pipeline on the demo clips, once for this module."""
    root = copy_project(tmp_path_factory.mktemp("project"))
    run_cli(["dithead", "demo-data"], root)
    run_cli(["dithead", "profile", "smoke"], root)
    run_cli(["dvc", "repro"], root)
    return root


def video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate)
        frames = sum(1 for _ in container.decode(video))
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio))
        return {"frames": frames, "fps": fps, "audio_seconds": samples / audio.sample_rate,
                "tags": dict(container.metadata)}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_every_stage_is_declared_in_order():
    import yaml

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    assert list(stages) == STAGES


def test_data_stages_on_demo_clips(smoke_project):
    report = json.loads((smoke_project / "metrics" / "preprocess.json").read_text())
    assert report["clips"] == 2 and report["skipped"] == 0
    features = json.loads((smoke_project / "data" / "features" / "features.json").read_text())
    assert features["encoder"] == "mel"
    for clip in list_clips(smoke_project / "data" / "processed"):
        feats = np.load(smoke_project / "data" / "features" / f"{clip.name}.npy")
        assert feats.shape == (len(clip), features["dim"])
        assert (smoke_project / "metrics" / "preview" / f"{clip.name}.png").is_file()


def test_models_are_saved_with_save_pretrained(smoke_project):
    from diffusers import VQModel

    from dithead.models.dit import DiTHead

    for name in ("vqgan_masked", "vqgan_gt"):
        assert VQModel.from_pretrained(smoke_project / "models" / name).config.num_vq_embeddings == 256
    assert DiTHead.from_pretrained(smoke_project / "models" / "dit" / "ema").config.depth == 2
    split = json.loads((smoke_project / "models" / "dit" / "split.json").read_text())
    assert len(split["validation"]) == 1 and not set(split["validation"]) & set(split["train"])


def test_sampled_and_interpolated_videos_play(smoke_project):
    split = json.loads((smoke_project / "models" / "dit" / "split.json").read_text())
    held_out = split["validation"][0]
    samples = smoke_project / "outputs" / "samples"
    videos = [samples / f"{held_out}.mp4", samples / "dubbed" / "astronaut__astronaut_mirrored.mp4"]
    interpolated_dir = smoke_project / "outputs" / "interpolated"
    assert (samples / f"{held_out}__silence.mp4").is_file()            # baselines are made, not interpolated
    assert sorted(interpolated_dir.rglob("*.mp4")) == sorted(interpolated_dir / v.relative_to(samples) for v in videos)
    for video in videos:
        facts = video_facts(video)
        assert facts["frames"] == 100 and facts["fps"] == 25
        assert abs(facts["audio_seconds"] - facts["frames"] / 25) <= 1 / 25 + 0.03   # AAC priming tolerance
        assert facts["tags"].get("synthetic") == "true"
        assert detect_video(video)["watermarked"]
        interpolated = smoke_project / "outputs" / "interpolated" / video.relative_to(samples)
        doubled = video_facts(interpolated)
        assert doubled["frames"] == 200 and doubled["fps"] == 50
        # Frame by frame, not only the pooled vote: the in-between frames carry the mark too.
        frames = [img for _, _, img in iter_source_frames(interpolated)]
        assert min(detect_frames(frames, crops=[0.0]).frame_accuracies) >= DETECTION_THRESHOLD
        assert abs(doubled["audio_seconds"] - facts["frames"] / 25) <= 1 / 25 + 0.03


def test_evaluation_reports_computed_and_missing_metrics(smoke_project):
    metrics = json.loads((smoke_project / "metrics" / "eval.json").read_text())
    overall = metrics["overall"]
    split = json.loads((smoke_project / "models" / "dit" / "split.json").read_text())
    clip = metrics["clips"][split["validation"][0]]
    assert overall["clips"] == 1                                       # baselines are not averaged in
    for name in ("psnr", "ssim", "lmd", "mouth_psnr", "mouth_open_r"):
        assert overall[name] == pytest.approx(clip[name])
    # Only the masked lower face is generated: the mouth box matches the ground truth worse than the whole
    # crop, whose upper part is the source's own pixels.
    assert clip["mouth_psnr"] < clip["psnr"] and clip["mouth_ssim"] < clip["ssim"]
    for baseline in ("reference_copy", "mismatched_audio", "silence"):
        assert metrics["baselines"][baseline]["psnr"] == pytest.approx(
            metrics["clips"][f"{split['validation'][0]}__{baseline}"]["psnr"])
    report = json.loads((smoke_project / "outputs" / "eval" / "report.json").read_text())
    for name in ("lpips", "fid", "lse_c", "lse_d"):                   # no weights in CI: missing, with the key
        assert name not in overall and "weights." in report["missing"][name]
    assert all(isinstance(v, (int, float)) for v in overall.values())  # `dvc metrics show` stays a table


def test_exp_show_lists_evaluation_metrics(smoke_project):
    shown = run_cli(["dvc", "exp", "show", "--csv"], smoke_project).stdout
    header = shown.splitlines()[0]
    assert "psnr" in header and "ssim" in header and "lmd" in header


def test_changed_sampling_param_reruns_only_sampling_and_after(smoke_project):
    run = run_cli(["dvc", "exp", "run", "-S", "sample.steps=5"], smoke_project)
    assert stages_run(run.stdout + run.stderr) == {"sample", "interpolate", "evaluate"}


def test_data_stages_on_real_clips(shared_clips, tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("real"))
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    for name in ("demo1.mp4", "yongen.mp4", "yongen.wav"):      # yongen: video without audio + 48 kHz stereo wav
        shutil.copy(shared_clips / name, raw / name)
    run_cli(["dithead", "profile", "smoke"], root)
    run_cli(["dvc", "repro", "extract_audio_features"], root)
    report = json.loads((root / "metrics" / "preprocess.json").read_text())
    assert report["clips"] == 2, report["skipped_clips"]
    clips = {c.name: c for c in list_clips(root / "data" / "processed")}
    assert len(clips["demo1"]) == 250 and np.mean(clips["demo1"].valid) > 0.95
    yongen = clips["yongen"]
    assert abs(len(yongen) - yongen.meta["source"]["duration"] * 25) <= 1
    assert yongen.meta["audio"]["source_rate"] == 48000 and yongen.meta["audio"]["padded_samples"] > 0
    assert np.mean(yongen.valid) > 0.9
    assert run_cli(["dvc", "status", "extract_audio_features"], root).stdout.strip().endswith("up to date.")
