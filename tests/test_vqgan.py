"""VQGAN stages and the shared training utilities (tiny models, 64x64 demo crops)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import VQModel
from safetensors.torch import load_file

from conftest import run_until_sigkill, sigterm_self_when
from dithead.data.mask import MaskSettings, mouth_box_mask
from dithead.data.store import list_clips
from dithead.metrics.image import psnr, ssim
from dithead.models.vqgan import NLayerDiscriminator, VQAutoencoder, build_vqmodel, downsample_factor
from dithead.training.run import Checkpointer, GracefulStop, StepSampler, make_accelerator
from dithead.training.train_vqgan import LossWeights, generator_loss, reconstruction_metrics, weighted_l1
from dithead.training.split import valid_frames
from dithead.training.vqgan_data import FrameDataset, split_frames

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "stages" / "train_vqgan.py"
TINY = dict(channels=[8, 16, 16], layers_per_block=1, latent_channels=3, codebook_size=64, norm_groups=8)
# Short runs that still cross the discriminator start and several checkpoints.
RUN = dict(steps=40, disc_start=20, checkpoint_every=10, eval_every=10, image_every=20, log_every=10,
           batch_size=4, val_frames=8, workers=0, perceptual_weight=0.0, mixed_precision="no")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_params(root: Path, **vqgan) -> dict:
    """params.yaml in ``root``: the project's defaults, the smoke profile, then ``vqgan`` overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(params, yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text()))
    params = _merge(params, {"vqgan": {**RUN, **vqgan}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def make_workdir(root: Path, processed_demo: Path, **vqgan) -> Path:
    root.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "processed").symlink_to(processed_demo / "data" / "processed")
    write_params(root, **vqgan)
    return root


def run_stage(workdir: Path, monkeypatch, which: str = "gt") -> None:
    """The stage's main() in ``workdir`` on one thread (the same arithmetic as a subprocess with OMP_NUM_THREADS=1)."""
    main = _stage_module().main
    threads = torch.get_num_threads()
    monkeypatch.chdir(workdir)
    torch.set_num_threads(1)
    try:
        main(["--which", which])
    finally:
        torch.set_num_threads(threads)
        monkeypatch.chdir(REPO)


def _stage_module():
    spec = importlib.util.spec_from_file_location("train_vqgan_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metric_history(workdir: Path, name: str, which: str = "gt") -> list[tuple[int, float]]:
    path = workdir / "dvclive" / f"train_vqgan_{which}" / "plots" / "metrics" / f"{name}.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [(int(step), float(value)) for step, value in rows]


def checkpoint_steps(workdir: Path, which: str = "gt") -> list[int]:
    directory = workdir / "checkpoints" / f"train_vqgan_{which}"
    return sorted(int(p.name.split("_")[1]) for p in directory.glob("step_*")) if directory.is_dir() else []


@pytest.fixture(scope="module")
def reference_run(processed_demo, tmp_path_factory) -> Path:
    """An uninterrupted smoke training of the ground-truth VQGAN."""
    monkeypatch = pytest.MonkeyPatch()
    workdir = make_workdir(tmp_path_factory.mktemp("vqgan") / "reference", processed_demo)
    try:
        run_stage(workdir, monkeypatch)
    finally:
        monkeypatch.undo()
    return workdir


# --------------------------------------------------------------------------- model


def test_vqmodel_round_trips_through_save_pretrained(tmp_path):
    torch.manual_seed(0)
    model = build_vqmodel(image_size=64, **TINY).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images).latents
        before = model.decode(latents).sample
    model.save_pretrained(tmp_path / "vq")
    loaded = VQModel.from_pretrained(tmp_path / "vq").eval()
    with torch.no_grad():
        after = loaded.decode(loaded.encode(images).latents).sample
    assert downsample_factor(loaded) == 4
    assert latents.shape == (2, 3, 16, 16)
    assert loaded.config.num_vq_embeddings == 64
    torch.testing.assert_close(after, before)


def test_generator_loss_trains_the_autoencoder_not_the_discriminator():
    torch.manual_seed(0)
    autoencoder = VQAutoencoder(build_vqmodel(image_size=64, **TINY))
    discriminator = NLayerDiscriminator(channels=8, layers=2)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    reconstruction, codebook_loss, codes = autoencoder(images)
    loss, logs = generator_loss(images, reconstruction, codebook_loss, pixel_weight=torch.ones(2, 1, 64, 64),
                                weights=LossWeights(perceptual=0.0), perceptual=None, discriminator=discriminator,
                                last_layer=autoencoder.last_layer)
    loss.backward()
    assert codes.shape == (2 * 16 * 16,)
    assert {"l1", "codebook", "adversarial", "disc_weight"} <= set(logs)
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())
    assert autoencoder.last_layer.grad is not None and autoencoder.vq.quantize.embedding.weight.grad is not None


# --------------------------------------------------------------------------- data


def test_frames_split_and_masked_dataset(processed_demo):
    clips = list_clips(processed_demo / "data" / "processed")
    train, val = split_frames(clips, 8)
    assert len(val) == 8 and len(train) + len(val) == sum(int(np.sum(c.valid)) for c in clips)
    assert not {tuple(r) for r in train} & {tuple(r) for r in val}
    # The held-out frames are the tail of each clip.
    for c, clip in enumerate(clips):
        assert val[val[:, 0] == c][:, 1].min() > train[train[:, 0] == c][:, 1].max()

    plain = FrameDataset(clips, masked=False, mask=MaskSettings(9, 2.0, 2), seed=0, frames=train)
    masked = FrameDataset(clips, masked=True, mask=MaskSettings(9, 2.0, 2), seed=0, frames=train)
    (image, weight), (hidden, _) = plain[0], masked[0]
    assert weight.shape == (1, 64, 64) and bool((weight == 1).all())
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0
    # The mask blacks out (-1) part of the face and leaves the rest as it was.
    blacked = (hidden <= -0.99).all(dim=0) & ~(image <= -0.99).all(dim=0)
    assert 0.02 < float(blacked.float().mean()) < 0.6
    assert float((hidden - image).abs().amax(dim=0).eq(0).float().mean()) > 0.3
    # The same index is the same sample; the same frame in another epoch gets another shift.
    torch.testing.assert_close(masked[5], masked[5])
    shifts = {masked[5 + epoch * len(masked)][0].numpy().tobytes() for epoch in range(6)}
    assert len(shifts) > 1


def test_mouth_weight_makes_the_lips_of_each_frame_count_more_in_the_reconstruction_loss(processed_demo):
    clips = list_clips(processed_demo / "data" / "processed")
    frames = valid_frames(clips)[[0, -1]]
    weighted = FrameDataset(clips, masked=False, mask=MaskSettings(9, 2.0, 2), seed=0, frames=frames, mouth_weight=4.0)
    for index, (c, frame) in enumerate(frames):
        image, weight = weighted[index]
        box = mouth_box_mask(np.asarray(clips[c].landmarks[frame]), (64, 64))
        assert 0 < box.mean() < 0.3
        np.testing.assert_array_equal(weight[0].numpy(), 1 + 3 * box)
    with pytest.raises(ValueError, match="lips are hidden"):
        FrameDataset(clips, masked=True, mask=MaskSettings(9, 2.0, 2), seed=0, frames=frames, mouth_weight=4.0)

    # The same error counts 4x more inside the box than outside; with weights of 1 the loss is plain L1.
    image, weight = (t[None] for t in weighted[0])
    inside = image + 0.5 * (weight > 1)
    outside = image + 0.5 * torch.roll(weight > 1, shifts=32, dims=-1)
    plain = torch.ones_like(weight)
    # float32 sums of ~10^4 terms: a tolerance any CPU's reduction order meets
    four_times = 4 * float(weighted_l1(image, outside, weight))
    assert float(weighted_l1(image, inside, weight)) == pytest.approx(four_times, rel=1e-4)
    assert float(weighted_l1(image, inside, plain)) == pytest.approx(float((inside - image).abs().mean()))


def test_step_sampler_resumes_the_same_order_and_shards_processes():
    def draws(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = draws(StepSampler(10, batch_size=3, seed=1, gradient_accumulation_steps=2), 3 * 2 * 5)
    resumed = draws(StepSampler(10, batch_size=3, seed=1, start_step=2, gradient_accumulation_steps=2), 3 * 2 * 3)
    assert resumed == full[3 * 2 * 2:]
    # Each epoch visits every item once.
    assert sorted(i % 10 for i in full[:10]) == list(range(10))
    assert sorted(i % 10 for i in full[10:20]) == list(range(10))
    shards = [draws(StepSampler(10, batch_size=2, seed=1, num_processes=2, process_index=p), 10) for p in range(2)]
    assert not set(shards[0]) & set(shards[1])


def test_one_cpu_training_process_uses_the_cores_not_accelerates_one_thread(monkeypatch):
    """`accelerate launch` starts each process with OMP_NUM_THREADS=1; a lone CPU process must not train on one core."""
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("DITHEAD_CPU_THREADS", "3")
        torch.set_num_threads(1)                                   # what OMP_NUM_THREADS=1 leaves
        make_accelerator()
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("DITHEAD_CPU_THREADS")
        torch.set_num_threads(1)
        make_accelerator()
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("DITHEAD_CPU_THREADS", "two")
        with pytest.raises(ValueError, match="DITHEAD_CPU_THREADS must be a whole number >= 1, not 'two'"):
            make_accelerator()
    finally:
        torch.set_num_threads(threads)


def test_graceful_stop_turns_sigterm_into_a_request():
    with GracefulStop() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.should_stop()
    assert signal.getsignal(signal.SIGTERM) != stop._handle


class FakeAccelerator:
    """What a Checkpointer uses of an ``accelerate.Accelerator``; ``barrier`` stands in for the processes' barrier."""

    def __init__(self, is_main_process: bool = True, barrier: threading.Barrier | None = None):
        self.is_main_process = is_main_process
        self.barrier = barrier
        self.loaded: list[str] = []

    def wait_for_everyone(self) -> None:
        if self.barrier is not None:
            self.barrier.wait()

    def print(self, *args) -> None:
        pass

    def save_state(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"state")

    def load_state(self, path: str) -> None:
        self.loaded.append(path)


def test_run_fingerprint_covers_the_data_not_just_its_length(processed_demo, tmp_path):
    """Re-preprocessing with other crops or other landmarks (masks) of the same length, or training on
    another frame range, makes an interrupted run's checkpoints stale."""
    import shutil

    from dithead.training.split import FrameRangeView
    from dithead.data.store import ProcessedClip
    from dithead.training.train_vqgan import VQGANTrainingConfig, run_fingerprint

    source = next(c for c in list_clips(processed_demo / "data" / "processed") if c.name == "astronaut")
    shutil.copytree(source.directory, tmp_path / "astronaut")
    clip = ProcessedClip(tmp_path / "astronaut")
    config = VQGANTrainingConfig(masked=True)
    base = run_fingerprint(config, [clip])
    assert run_fingerprint(config, [ProcessedClip(tmp_path / "astronaut")]) == base          # the same data

    landmarks = np.load(clip.directory / "landmarks.npy")
    np.save(clip.directory / "landmarks.npy", landmarks + 1.0)                                # other masks
    assert run_fingerprint(config, [ProcessedClip(clip.directory)]) != base
    np.save(clip.directory / "landmarks.npy", landmarks)

    index = np.load(clip.directory / "crops.idx.npy")
    index[[0, 1]] = index[[1, 0]]                                                              # other crops
    np.save(clip.directory / "crops.idx.npy", index)
    assert run_fingerprint(config, [ProcessedClip(clip.directory)]) != base
    shutil.copy(source.directory / "crops.idx.npy", clip.directory / "crops.idx.npy")

    assert run_fingerprint(config, [FrameRangeView(clip, 0, len(clip) - 20)]) != base         # other frames


def test_mouth_weight_makes_only_the_ground_truth_vqgans_checkpoints_stale(processed_demo):
    from dithead.training.train_vqgan import VQGANTrainingConfig, run_fingerprint

    clips = list_clips(processed_demo / "data" / "processed")
    for masked, stale in ((False, True), (True, False)):       # the masked VQGAN never sees the lips
        plain = run_fingerprint(VQGANTrainingConfig(masked=masked), clips)
        weighted = run_fingerprint(VQGANTrainingConfig(masked=masked, mouth_weight=5.0), clips)
        assert (weighted != plain) is stale
        # Weight 1 is the loss of checkpoints made before the setting existed: they still resume.
        assert "mouth_weight" not in plain["config"]


def test_checkpointer_resumes_its_own_run_only(tmp_path):
    directory = tmp_path / "checkpoints"
    Checkpointer(FakeAccelerator(), directory, every=10, fingerprint={"lr": 1}).save(10)
    assert json.loads((directory / "run.json").read_text()) == {"lr": 1}
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []     # no temporary left behind
    resumed = FakeAccelerator()
    assert Checkpointer(resumed, directory, every=10, fingerprint={"lr": 1}).resume(max_step=20) == 10
    assert resumed.loaded == [str(directory / "step_00000010")]                     # more steps: it continues
    assert Checkpointer(FakeAccelerator(), directory, every=10, fingerprint={"lr": 1}).resume(max_step=5) == 0
    assert not directory.exists()                                 # fewer steps than saved: it cannot continue


def test_checkpointer_processes_pass_the_same_barriers_when_discarding(tmp_path):
    directory = tmp_path / "checkpoints"
    Checkpointer(FakeAccelerator(), directory, every=10, fingerprint={"lr": 1}).save(10)
    barrier = threading.Barrier(2, timeout=5)
    main, other = FakeAccelerator(True, barrier), FakeAccelerator(False, barrier)
    with ThreadPoolExecutor(2) as pool:
        main_start = pool.submit(Checkpointer(main, directory, every=10, fingerprint={"lr": 2}).resume)
        # The other process is slow: it looks at the checkpoints only once the main one waits at a barrier.
        deadline = time.monotonic() + 5
        while barrier.n_waiting == 0 and not main_start.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        other_start = pool.submit(Checkpointer(other, directory, every=10, fingerprint={"lr": 2}).resume)
        assert (main_start.result(), other_start.result()) == (0, 0)    # no barrier left waiting
    assert not directory.exists() and main.loaded == other.loaded == []


# --------------------------------------------------------------------------- stage


def test_validation_metrics_are_the_evaluation_metrics():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    restored = np.clip(originals + rng.normal(0, 20, originals.shape), 0, 255).astype(np.uint8)
    scores = reconstruction_metrics(originals, restored)
    assert scores["psnr"] == [psnr(b, a) for a, b in zip(originals, restored)]
    assert scores["ssim"] == [ssim(b, a) for a, b in zip(originals, restored)]


def test_training_improves_held_out_psnr(reference_run):
    psnr = metric_history(reference_run, "val/psnr")
    assert [step for step, _ in psnr] == [10, 20, 30, 40]
    assert psnr[-1][1] > psnr[0][1] + 1.0, psnr
    summary = json.loads((reference_run / "dvclive" / "train_vqgan_gt" / "metrics.json").read_text())
    assert summary["step"] == 40
    assert 0 < summary["train"]["codebook_used"] <= 1 and summary["train"]["codebook_perplexity"] >= 1
    assert "disc_loss" in summary["train"]  # the discriminator took part after disc_start
    assert (reference_run / "dvclive" / "train_vqgan_gt" / "plots" / "images" / "reconstructions.png").is_file()
    model = VQModel.from_pretrained(reference_run / "models" / "vqgan_gt")
    assert model.config.sample_size == 64 and model.config.scaling_factor != 1.0
    assert not (reference_run / "checkpoints" / "train_vqgan_gt").exists()  # cleared after the final save


def test_interrupted_training_resumes_to_the_uninterrupted_result(reference_run, processed_demo, tmp_path,
                                                                  monkeypatch):
    workdir = make_workdir(tmp_path / "interrupted", processed_demo)

    # 1. SIGTERM: the stage saves a checkpoint at the current step and exits with a message.
    with sigterm_self_when(lambda: bool(checkpoint_steps(workdir))):
        with pytest.raises(SystemExit, match=r"interrupted at step (\d+)") as stopped:
            run_stage(workdir, monkeypatch)
    stopped_at = max(checkpoint_steps(workdir))
    assert f"step {stopped_at};" in str(stopped.value) and 10 <= stopped_at < 40

    # 2. SIGKILL (no chance to save) once a newer checkpoint exists.
    log = tmp_path / "stage.log"
    code = run_until_sigkill([sys.executable, str(STAGE), "--which", "gt"], workdir, log,
                            lambda: max(checkpoint_steps(workdir), default=0) > stopped_at)
    assert code == -signal.SIGKILL, log.read_text()[-2000:]
    assert not (workdir / "models" / "vqgan_gt").exists()

    # 3. The same command again finishes the run.
    run_stage(workdir, monkeypatch)
    summary = json.loads((workdir / "dvclive" / "train_vqgan_gt" / "metrics.json").read_text())
    assert summary["step"] == 40
    assert [s for s, _ in metric_history(workdir, "val/psnr")] == [10, 20, 30, 40]
    resumed = load_file(workdir / "models" / "vqgan_gt" / "diffusion_pytorch_model.safetensors")
    reference = load_file(reference_run / "models" / "vqgan_gt" / "diffusion_pytorch_model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)
    np.testing.assert_allclose([v for _, v in metric_history(workdir, "val/psnr")],
                               [v for _, v in metric_history(reference_run, "val/psnr")], rtol=1e-4)


def test_perceptual_loss_without_lpips_weights_fails_before_training(processed_demo, tmp_path, monkeypatch):
    workdir = make_workdir(tmp_path / "no_lpips", processed_demo, perceptual_weight=0.5)
    with pytest.raises(SystemExit, match=r"vqgan.perceptual_weight is 0.5.*weights.lpips_backbone is empty"):
        run_stage(workdir, monkeypatch)
    from dithead.models.lpips import random_checkpoints

    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["weights"].update(lpips_backbone=str(tmp_path / "alexnet.pth"), lpips_linear=str(tmp_path / "missing.pth"))
    torch.save(random_checkpoints()[0], tmp_path / "alexnet.pth")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"weights.lpips_linear points to .*missing.pth"):
        run_stage(workdir, monkeypatch)
    assert not (workdir / "checkpoints").exists() and not (workdir / "dvclive").exists()


def test_perceptual_loss_runs_with_a_random_lpips_backbone(processed_demo, tmp_path, monkeypatch):
    from dithead.models.lpips import random_checkpoints

    backbone, linear = random_checkpoints(seed=0)
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(linear, tmp_path / "alex_linear.pth")
    workdir = make_workdir(tmp_path / "lpips", processed_demo, perceptual_weight=1.0, steps=2, disc_start=1,
                           checkpoint_every=0, eval_every=2, image_every=2, log_every=1)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["weights"].update(lpips_backbone=str(tmp_path / "alexnet.pth"), lpips_linear=str(tmp_path / "alex_linear.pth"))
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(workdir, monkeypatch, which="masked")
    perceptual = metric_history(workdir, "train/perceptual", which="masked")
    assert [s for s, _ in perceptual] == [1, 2] and all(np.isfinite(v) and v > 0 for _, v in perceptual)
    assert (workdir / "models" / "vqgan_masked" / "config.json").is_file()
