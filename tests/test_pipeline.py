"""The DVC pipeline run as a user runs it: `dithead demo-data`, `dithead profile smoke`, `dvc repro`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import copy_project, run_cli
from dithead.store import list_clips

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("project"))
    run_cli(["dithead", "demo-data"], root)
    run_cli(["dithead", "profile", "smoke"], root)
    return root


def test_data_stages_on_demo_clips(smoke_project):
    run_cli(["dvc", "repro", "extract_audio_features"], smoke_project)
    report = json.loads((smoke_project / "metrics" / "preprocess.json").read_text())
    assert report["clips"] == 2 and report["skipped"] == 0
    features = json.loads((smoke_project / "data" / "features" / "features.json").read_text())
    assert features["encoder"] == "mel"
    for clip in list_clips(smoke_project / "data" / "processed"):
        feats = np.load(smoke_project / "data" / "features" / f"{clip.name}.npy")
        assert feats.shape == (len(clip), features["dim"])
        assert (smoke_project / "metrics" / "preview" / f"{clip.name}.png").is_file()
    # Nothing changed: DVC runs nothing again.
    status = run_cli(["dvc", "status", "extract_audio_features"], smoke_project).stdout
    assert "up to date" in status


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
