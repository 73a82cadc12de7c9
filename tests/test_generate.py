"""The generation pipeline on the demo clips with tiny random models saved as the stages save them."""

import types
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dithead.data.audio_features import AudioFeatureSettings, audio_feature_extractor
from dithead.data.face import nearest_valid
from dithead.data.mask import MaskSettings, lower_face_mask
from dithead.data.store import list_clips
from dithead.data.video_reader import iter_frames
from dithead.inference import watermark as wm
from dithead.inference.pipeline import DiTHeadPipeline, ModelDirectoryError, SampleSettings

FPS = 25


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models/{dit (+ ema/, scheduler/), vqgan_masked, vqgan_gt} with tiny random weights (64x64 crops, f = 4)."""
    import torch

    from dithead.models.dit import DiTHead, make_noise_scheduler
    from dithead.models.vqgan import build_vqmodel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    for name in ("vqgan_masked", "vqgan_gt"):
        build_vqmodel(image_size=64, channels=[8, 16, 16], layers_per_block=1, latent_channels=3,
                      codebook_size=64, norm_groups=8).save_pretrained(root / name)
    dit = DiTHead(sample_size=16, latent_channels=3, patch_size=2, hidden_size=32, depth=1, num_heads=2, audio_dim=32)
    dit.save_pretrained(root / "dit")
    dit.save_pretrained(root / "dit" / "ema")
    make_noise_scheduler().save_pretrained(root / "dit" / "scheduler")
    return root


def probe(path):
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return (sum(1 for _ in c.decode(video=0)), float(v.average_rate), float(a.duration * a.time_base),
                dict(c.metadata))


@pytest.mark.slow
def test_sample_clip_writes_dubbed_watermarked_video(processed_demo, models, tmp_path):
    clips = {c.name: c for c in list_clips(processed_demo / "data" / "processed")}
    video, driver = clips["astronaut"], clips["astronaut_mirrored"]
    pipe = DiTHeadPipeline.from_pretrained(models, device="cpu", mask=MaskSettings(kernel_size=9, sigma=2.0))
    settings = SampleSettings(steps=2, chunk_size=16)

    own = tmp_path / "own.mp4"
    report = pipe.sample_clip(video, np.load(processed_demo / "data" / "features" / "astronaut.npy"),
                              video.audio_path, own, settings, progress=False)
    frames, fps, audio_s, tags = probe(own)
    assert frames == report["frames"] == len(video) and fps == FPS
    assert abs(audio_s - frames / FPS) <= 1 / FPS
    assert tags[wm.SYNTHETIC_TAG] == "true" and tags[wm.MODEL_TAG] == "DiT-Head"
    assert wm.detect_video(own)["watermarked"]
    phases = report["phase_seconds"]
    assert set(phases) == {"masking", "masked encode", "model", "latent decode", "decode", "paste-back",
                           "watermark", "encode"}
    assert all(s > 0 for s in phases.values())
    assert sum(phases.values()) == pytest.approx(report["seconds"], rel=0.05)   # the phases cover the job

    # Driven by a longer audio (40 extra frames): the video plays back and forth to cover it.
    features = np.load(processed_demo / "data" / "features" / "astronaut_mirrored.npy")
    features = np.concatenate([features, features[:40]])
    dubbed = tmp_path / "dubbed.mp4"
    report = pipe.sample_clip(video, features, driver.audio_path, dubbed, settings, progress=False)
    assert report["ping_pong"] and report["frames"] == len(features)
    assert probe(dubbed)[0] == len(features)


def first_frames(path, count: int) -> np.ndarray:
    with av.open(str(path)) as c:
        frames = []
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                return np.stack(frames)
    return np.stack(frames)


def test_held_out_part_is_dubbed_from_its_own_frames_with_a_reference_from_the_training_part(processed_demo, models,
                                                                                              tmp_path):
    clip = next(c for c in list_clips(processed_demo / "data" / "processed") if c.name == "astronaut")
    pipe = DiTHeadPipeline.from_pretrained(models, device="cpu", mask=MaskSettings(kernel_size=9, sigma=2.0))
    settings = SampleSettings(steps=1, chunk_size=8, min_ref_distance=10)
    features = np.load(processed_demo / "data" / "features" / "astronaut.npy")[80:100]
    out = tmp_path / "held_out.mp4"
    report = pipe.sample_clip(clip, features, clip.audio_path, out, settings, frames=(80, 100),
                              reference_frames=(0, 60), progress=False)
    assert report["frames"] == probe(out)[0] == 20 and report["start_frame"] == 80
    assert 0 <= report["reference_frame"] < 60 and not report["ping_pong"]
    # Outside the mask the output shows source frames 80.., not 0.. (the head moves between them).
    source = [f.image.astype(int) for f in iter_frames(clip.meta["source"]["video"], FPS) if f.index < 83]
    made = first_frames(out, 3)[:, :100].astype(int)
    from_held_out = np.abs(made - np.stack(source[80:83])[:, :100]).mean()
    from_start = np.abs(made - np.stack(source[0:3])[:, :100]).mean()
    assert from_held_out < 0.5 * from_start, (from_held_out, from_start)


def test_reference_copy_pastes_the_reference_crop_in_every_frame(processed_demo, models, tmp_path):
    clip = next(c for c in list_clips(processed_demo / "data" / "processed") if c.name == "astronaut")
    pipe = DiTHeadPipeline.from_pretrained(models, device="cpu", mask=MaskSettings(kernel_size=9, sigma=2.0))
    settings = SampleSettings(min_ref_distance=10)
    out = tmp_path / "copy.mp4"
    report = pipe.paste_reference(clip, 12, clip.audio_path, out, settings, frames=(80, 100), reference_frames=(0, 60))
    assert report["frames"] == probe(out)[0] == 12 and 0 <= report["reference_frame"] < 60
    # Every frame's lower face is the reference crop, not the frame's own: cut each output frame at the
    # frame's crop box and compare inside the mask.
    reference = clip.crop(report["reference_frame"]).astype(float)
    to_reference, to_own = [], []
    for k, frame in enumerate(first_frames(out, 12)):
        x0, y0, x1, y1 = np.asarray(clip.boxes[80 + k]).round().astype(int)
        cut = cv2.resize(frame[y0:y1, x0:x1], (64, 64), interpolation=cv2.INTER_AREA).astype(float)
        inside = lower_face_mask(clip.landmarks[80 + k], (64, 64), 9, 2.0) > 0.9
        to_reference.append(np.abs(cut - reference)[inside].mean())
        to_own.append(np.abs(cut - clip.crop(80 + k).astype(float))[inside].mean())
    assert np.mean(to_reference) < 0.5 * np.mean(to_own), (np.mean(to_reference), np.mean(to_own))


@pytest.mark.slow
def test_pipeline_call_on_a_raw_video_and_audio(demo_raw, models, tmp_path):
    from dithead.data.preprocess import PreprocessConfig

    pipe = DiTHeadPipeline.from_pretrained(models, device="cpu", mask=MaskSettings(kernel_size=9, sigma=2.0),
                                           audio_features=audio_feature_extractor(AudioFeatureSettings(encoder="mel", n_mels=32), FPS))
    out = tmp_path / "out.mp4"
    report = pipe(demo_raw / "astronaut.mp4", demo_raw / "astronaut_mirrored.wav", out, SampleSettings(steps=1),
                  PreprocessConfig(size=64, smooth_frames=5, min_valid_frames=11), progress=False)
    frames, fps, audio_s, _ = probe(out)
    assert frames == report["frames"] and abs(audio_s - frames / FPS) <= 1 / FPS
    assert {"audio features", "preprocess", "model", "encode"} <= set(report["phase_seconds"])


def test_missing_model_directory_names_the_stage(tmp_path):
    with pytest.raises(ModelDirectoryError, match="dvc repro train_dit"):
        DiTHeadPipeline.from_pretrained(tmp_path)


def test_frames_without_a_face_borrow_the_nearest_landmarks():
    valid = np.array([False, True, False, False, False, True, False])
    assert nearest_valid(valid).tolist() == [1, 1, 1, 1, 5, 5, 5]


def test_frame_masks_are_made_once_and_shared_by_encoding_and_paste_back(monkeypatch):
    from types import SimpleNamespace

    import torch

    import dithead.inference.pipeline as generate
    from dithead.data.mask import lower_face_mask
    from dithead.inference.sampling import driving_frame_order

    n, chunk = 12, 4
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(10, 54, (n, 468, 2)).astype(np.float32)
    valid = np.ones(n, bool)
    valid[5], landmarks[5] = False, np.nan                  # no face: borrows frame 4's landmarks
    clip = SimpleNamespace(meta={"size": 64}, landmarks=landmarks, valid=valid)
    made = []
    monkeypatch.setattr(generate, "lower_face_mask",
                        lambda points, *a, **k: made.append(1) or lower_face_mask(points, *a, **k))
    order = driving_frame_order(n, 30)                      # plays forward, back, forward again
    conditions = generate.ClipConditions(clip, order, None, None, MaskSettings(9, 2.0), torch.device("cpu"), None,
                                         mask_cache_size=2 * chunk)
    for start in range(0, len(order), chunk):
        frames = [int(v) for v in order[start:start + chunk]]
        for_encoding = [conditions.mask(v) for v in frames]
        before = len(made)
        for_paste_back = [conditions.mask(v) for v in frames]
        assert len(made) == before and all(a is b for a, b in zip(for_encoding, for_paste_back))
    assert len(made) < len(order) - 5                       # frame 5 and repeats at the turns come from the cache
    assert conditions.mask(5) is conditions.mask(4) and not conditions.mask(4).flags.writeable
    assert np.array_equal(conditions.mask(3), lower_face_mask(landmarks[3], (64, 64), 9, 2.0))


class RecordingDiT:
    """Stands in for the DiT: predicts zero noise and records what every call receives."""

    def __init__(self):
        import torch

        self.anchor = torch.nn.Parameter(torch.zeros(()))        # the sampler reads dtype from the parameters
        self.config = types.SimpleNamespace(audio_window=11)
        self.calls = []

    def parameters(self):
        return iter([self.anchor])

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def __call__(self, sample, masked, reference, audio, timestep):
        import torch

        self.calls.append({"masked": masked.clone(), "reference": reference.clone(), "audio": audio.clone(),
                           "frames": len(sample)})
        return types.SimpleNamespace(sample=torch.zeros_like(sample))


class StandInVQ:
    """Encodes by 4x average pooling (a latent that is a small copy of the image it saw);
    decodes every latent to the same solid colour, so a pasted crop is easy to find."""

    config = types.SimpleNamespace(scaling_factor=1.0, sample_size=64)

    def __init__(self, colour=(1.0, -1.0, -1.0)):
        self.colour = colour

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def encode(self, images):
        import torch.nn.functional as F

        return types.SimpleNamespace(latents=F.avg_pool2d(images, 4))

    def decode(self, latents):
        import torch

        colour = torch.tensor(self.colour).view(1, 3, 1, 1)
        return types.SimpleNamespace(sample=colour.expand(len(latents), 3, 64, 64).clone())


def test_each_frame_gets_its_own_conditions_and_its_crop_lands_in_its_mask(processed_demo, tmp_path, monkeypatch):
    """Generation wiring: frame k is sampled from frame k's masked crop and audio window, with the reference
    frame's latent; its crop is pasted inside its box and mask only; frames without a face pass through."""
    import shutil

    import torch

    import dithead.inference.pipeline as generate
    from dithead.models.dit import make_noise_scheduler
    from dithead.data.audio_features import audio_windows
    from dithead.data.mask import MaskSettings, apply_mask
    from dithead.inference.sampling import make_scheduler
    from dithead.data.store import ProcessedClip

    source = next(c for c in list_clips(processed_demo / "data" / "processed") if c.name == "astronaut")
    clip_dir = tmp_path / "astronaut"
    shutil.copytree(source.directory, clip_dir)
    valid = np.load(clip_dir / "valid.npy")
    faceless = [7, 8, 30]
    valid[faceless] = False                                 # as if the face were lost in these frames
    np.save(clip_dir / "valid.npy", valid)
    clip = ProcessedClip(clip_dir)
    features = np.load(processed_demo / "data" / "features" / "astronaut.npy")

    written = []

    class FrameCollector:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, frame):
            written.append(frame.copy())

    monkeypatch.setattr(generate, "VideoWriter", FrameCollector)
    monkeypatch.setattr(wm, "embed", lambda frame, **mark: frame)
    dit = RecordingDiT()
    pipe = DiTHeadPipeline(dit, make_scheduler("ddim", make_noise_scheduler().config), StandInVQ(), StandInVQ(),
                           mask=MaskSettings(kernel_size=9, sigma=2.0))
    steps, chunk = 2, 16
    report = pipe.sample_clip(clip, features, clip.audio_path, tmp_path / "out.mp4",
                              SampleSettings(steps=steps, chunk_size=chunk), progress=False)

    n = len(clip)
    assert report["frames"] == len(written) == n
    # What the model received: per chunk, `steps` calls with that chunk's frames.
    first_step = dit.calls[::steps]
    assert [c["frames"] for c in first_step] == [min(chunk, n - s) for s in range(0, n, chunk)]
    masked = torch.cat([c["masked"] for c in first_step])
    audio = torch.cat([c["audio"] for c in first_step])
    np.testing.assert_array_equal(audio.numpy(), audio_windows(features, np.arange(n), 11))
    landmark_frame = nearest_valid(valid)
    for k in (0, 8, 17, n - 1):
        mask = lower_face_mask(clip.landmarks[landmark_frame[k]], (64, 64), 9, 2.0)
        image = torch.from_numpy(apply_mask(clip.crop(k), mask)).permute(2, 0, 1)[None]
        expected = torch.nn.functional.avg_pool2d(image.float() / 127.5 - 1, 4)
        torch.testing.assert_close(masked[k:k + 1], expected)
    reference = torch.from_numpy(clip.crop(report["reference_frame"])).permute(2, 0, 1)[None]
    for call in dit.calls[:steps]:                            # the first frame sees the reference frame's latent
        torch.testing.assert_close(call["reference"][:1], torch.nn.functional.avg_pool2d(reference / 127.5 - 1, 4))

    # Where the crops landed.
    src = [f.image for f, _ in zip(iter_frames(clip.meta["source"]["video"], FPS), range(n))]
    for k in range(n):
        changed = np.any(written[k] != src[k], axis=-1)
        if k in faceless:
            assert not changed.any(), f"frame {k} has no face and must pass through"
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in clip.boxes[k])
        inside = np.zeros_like(changed)
        inside[max(y0, 0):y1, max(x0, 0):x1] = True
        assert changed.any() and not (changed & ~inside).any(), f"frame {k}: pixels outside the crop box changed"
        top = y0 + (y1 - y0) // 3
        assert not changed[max(y0, 0):top].any(), f"frame {k}: the upper face (outside the mask) changed"
        red = np.all(written[k] == (255, 0, 0), axis=-1)
        assert red.sum() > 0.05 * (x1 - x0) * (y1 - y0), f"frame {k}: the crop is not pasted where the mask is full"


def smoke_params(tmp_path):
    """params.yaml defaults + the smoke profile (64x64 crops, 32 mel bins: what the tiny models expect)."""
    import yaml

    from dithead.params import load_params

    repo = Path(__file__).resolve().parents[1]
    params = load_params(repo / "params.yaml")
    for section, values in yaml.safe_load((repo / "profiles" / "smoke.yaml").read_text()).items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.slow
def test_generate_command_end_to_end(demo_raw, models, tmp_path, capsys):
    """`dithead generate` as a user runs it: a video, other speech, the models; a marked video as long as the
    speech, and a report with the time per phase. A bad input names the file and leaves no output behind."""
    import json

    import soundfile as sf

    from dithead.cli import main

    params = smoke_params(tmp_path)
    out, report = tmp_path / "dubbed.mp4", tmp_path / "report.json"
    speech = demo_raw / "astronaut_mirrored.wav"
    args = ["generate", "--video", str(demo_raw / "astronaut.mp4"), "--audio", str(speech), "--out", str(out),
            "--models", str(models), "--params", str(params), "--steps", "1"]
    assert main(args + ["--report", str(report), "--reference", "fixed"]) == 0
    frames, fps, audio_s, tags = probe(out)
    assert fps == FPS and frames == round(sf.info(speech).duration * FPS)
    assert tags[wm.SYNTHETIC_TAG] == "true" and wm.detect_video(out)["watermarked"]
    written = json.loads(report.read_text())
    assert written["frames"] == frames and {"preprocess", "model", "encode"} <= set(written["phase_seconds"])
    assert (written["reference"], written["noise"]) == ("fixed", "per_frame")     # the flag, and params.yaml's default
    assert "time per phase:" in capsys.readouterr().out

    missing = tmp_path / "nobody.mp4"
    failed_out = tmp_path / "failed.mp4"
    assert main(["generate", "--video", str(missing), "--audio", str(speech), "--out", str(failed_out),
                 "--models", str(models), "--params", str(params)]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not failed_out.exists() and list(tmp_path.glob("failed*")) == []


def test_in_order_yields_results_in_order_with_a_bounded_lead():
    """Watermarking runs in worker threads: results must come back in frame order, and the source must not
    be read more than ``ahead`` frames beyond what has been handed on (memory stays flat)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from dithead.inference.pipeline import in_order

    pulled = []

    def source():
        for i in range(20):
            pulled.append(i)
            yield i

    def uneven(i):
        time.sleep(0.002 * (i % 3))          # later items sometimes finish first
        return 10 * i

    with ThreadPoolExecutor(2) as pool:
        results = in_order(pool, uneven, source(), ahead=3)
        first = next(results)
        assert first == 0 and len(pulled) == 4          # the first item and 3 ahead
        assert [first, *results] == [10 * i for i in range(20)]
