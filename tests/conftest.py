"""Shared fixtures: the bundled demo clips, preprocessed once per test session, and the real clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# Training stages on one CPU thread, in this process and in the stage processes the tests start: results
# compared between runs (resume, batch independence) share their arithmetic, and the two CI cores are shared.
os.environ.setdefault("DITHEAD_CPU_THREADS", "1")

# ../shared/clips beside the checkout (as CI provides it); DITHEAD_SHARED_CLIPS points elsewhere.
SHARED_CLIPS = Path(os.environ.get("DITHEAD_SHARED_CLIPS") or Path(__file__).resolve().parents[2] / "shared" / "clips")
SMOKE_SIZE = 64
SMOKE_MELS = 32


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: stable timings and results on shared CI cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    """data/raw with the two bundled demo clips (4 s, 30 fps, 44.1 kHz)."""
    from dithead.data.demo_clips import make_demo_data

    raw = tmp_path_factory.mktemp("demo") / "data" / "raw"
    make_demo_data(raw)
    return raw


@pytest.fixture(scope="session")
def processed_demo(demo_raw) -> Path:
    """A root with data/processed/<clip>/ (64x64 crops) and data/features/<clip>.npy (mel) for the demo clips."""
    from dithead.data.audio_features import frame_features
    from dithead.data.preprocess import PreprocessConfig, process_dir
    from dithead.data.store import list_clips

    root = demo_raw.parent.parent
    cfg = PreprocessConfig(size=SMOKE_SIZE, smooth_frames=5, min_valid_frames=11)
    results = process_dir(demo_raw, root / "data" / "processed", cfg, workers=1)
    assert all(r.ok for r in results), [r.reason for r in results]
    features = root / "data" / "features"
    features.mkdir(parents=True)
    for clip in list_clips(root / "data" / "processed"):
        samples, rate = sf.read(clip.audio_path, dtype="float32")
        np.save(features / f"{clip.name}.npy", frame_features(samples, rate, len(clip), cfg.fps, "mel", n_mels=SMOKE_MELS))
    return root


@pytest.fixture(scope="session")
def shared_clips() -> Path:
    """The real talking-head clips beside the project; required in CI, skipped elsewhere when absent."""
    if SHARED_CLIPS.is_dir():
        return SHARED_CLIPS
    if os.environ.get("CI") == "true":
        pytest.fail(f"{SHARED_CLIPS} is missing: CI must provide the real clips")
    pytest.skip(f"{SHARED_CLIPS} not present (a fresh clone has no real clips)")


REPO = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> Path:
    """The project's files (tracked and new, not ignored), committed in a fresh git repo at ``dest``: a user's clone."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    # A repository-local identity: `dvc exp run` commits experiment refs.
    subprocess.run(["git", "config", "user.name", "dithead-tests"], cwd=dest, check=True)
    subprocess.run(["git", "config", "user.email", "tests@dithead.invalid"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "project"], cwd=dest, check=True)
    return dest


def run_cli(args: list[str], cwd: Path, timeout: float = 1200):
    """Run a command of the installed environment in ``cwd``; fail the test with its output if it fails."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def sigterm_self_when(ready):
    """Context: send this process SIGTERM once ``ready()`` is true (a stage under test runs in-process)."""
    import contextlib
    import signal
    import threading
    import time

    @contextlib.contextmanager
    def sending():
        def send():
            while not ready():
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        yield
        sender.join()

    return sending()


def run_until_sigkill(command: list[str], cwd: Path, log: Path, ready) -> int:
    """Run ``command`` and SIGKILL it (no chance to save) once ``ready()`` is true; returns its exit code."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            while not ready() and process.poll() is None:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            return process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
