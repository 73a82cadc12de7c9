"""preprocess on the demo clips and on every kind of bad input the stage must survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from dithead.data.audio import load_audio
from dithead.data.demo_clips import CLIPS, clip_frames, speech_like, write_video
from dithead.data.face import BoxSmoother, TrackedFrame
from dithead.data.preprocess import PreprocessConfig, process_dir, report
from dithead.data.store import ProcessedClip, list_clips
from dithead.data.video_reader import iter_frames

REPO = Path(__file__).resolve().parents[1]

FPS = 30
CFG = PreprocessConfig(size=64, smooth_frames=5, min_valid_frames=11)


def demo_frames(n: int, seconds: float = 2.0, seed: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    audio, envelope = speech_like(seconds, seed)
    return list(clip_frames(CLIPS[0], envelope, n)), audio


def write_vfr(path: Path, frames: list[np.ndarray], steps_ms: list[int]) -> None:
    """H.264 with irregular frame durations (variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        pts = 0
        for image, step in zip(frames, steps_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            pts += step
        container.mux(stream.encode())


def write_audio_only(path: Path, audio: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def bad_raw(tmp_path_factory) -> Path:
    """One raw folder holding a good clip beside every kind of bad or unusual input."""
    raw = tmp_path_factory.mktemp("bad") / "raw"
    raw.mkdir()
    frames, audio = demo_frames(60)
    rate = 44100
    write_video(raw / "good clip é 1.mp4", frames, FPS, audio, rate)              # spaces and non-ASCII
    (raw / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    good = (raw / "good clip é 1.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(good[: len(good) // 2])
    write_audio_only(raw / "audio_only.mp4", audio, rate)
    write_video(raw / "silent.mp4", frames, FPS)                                   # no audio, no .wav
    write_video(raw / "short_audio.mp4", frames, FPS)
    sf.write(raw / "short_audio.wav", audio[: rate // 2], rate)                     # 0.5 s for 2 s of video
    write_video(raw / "long_audio.mp4", frames, FPS)
    stereo48 = np.stack([np.resize(audio, 48000 * 3), np.resize(audio, 48000 * 3) * 0.5], axis=1)
    sf.write(raw / "long_audio.wav", stereo48, 48000)                               # 3 s, 48 kHz stereo
    write_vfr(raw / "vfr.mp4", frames, [20 if (i // 10) % 2 == 0 else 50 for i in range(60)])
    sf.write(raw / "vfr.wav", audio, rate)
    blank = [np.full_like(f, 128) for f in frames]
    write_video(raw / "noface.mp4", blank, FPS, audio, rate)
    leaves = [blank[i] if 30 <= i < 36 else f for i, f in enumerate(frames)]
    write_video(raw / "face_leaves.mp4", leaves, FPS, audio, rate)
    write_video(raw / "tiny.mp4", frames[:8], FPS, audio[: rate // 3], rate)
    (raw / "notes.txt").write_text("not a video")                                  # ignored
    return raw


@pytest.fixture(scope="module")
def bad_results(bad_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out")
    results = {r.name: r for r in process_dir(bad_raw, out, CFG, workers=2)}
    return out, results


def test_demo_clips_are_preprocessed(processed_demo):
    clips = list_clips(processed_demo / "data" / "processed")
    assert [c.name for c in clips] == ["astronaut", "astronaut_mirrored"]
    for clip in clips:
        n = len(clip)
        assert n == 100                                                    # 4 s at 30 fps -> 25 fps
        assert clip.crop(0).shape == (64, 64, 3) and clip.crop(n - 1).dtype == np.uint8
        assert clip.valid.all() and clip.landmarks.shape == (n, 468, 2) and clip.boxes.shape == (n, 4)
        inside = (clip.landmarks >= 0) & (clip.landmarks < 64)
        assert inside.mean() > 0.99                                        # the crop holds the whole face
        samples, rate = sf.read(clip.audio_path, dtype="float32")
        assert rate == 16000 and len(samples) == n * 16000 // 25 and np.abs(samples).max() <= 1.0
        assert clip.meta["audio"]["source_rate"] == 44100


def test_crop_box_is_smooth_over_time(processed_demo):
    clip = ProcessedClip(processed_demo / "data" / "processed" / "astronaut")
    centres = (clip.boxes[:, :2] + clip.boxes[:, 2:]) / 2
    jitter = np.abs(np.diff(centres, n=2, axis=0)).max()
    assert jitter <= 2.0, f"crop centre accelerates by {jitter} px between frames"


def test_mouth_opening_follows_the_audio(processed_demo):
    """The demo has something to learn: lip gap correlates with the audio's loudness."""
    clip = ProcessedClip(processed_demo / "data" / "processed" / "astronaut")
    gap = clip.landmarks[:, 14, 1] - clip.landmarks[:, 13, 1]
    samples, _ = sf.read(clip.audio_path, dtype="float32")
    loudness = np.sqrt((samples.reshape(len(clip), -1) ** 2).mean(axis=1))
    assert np.corrcoef(gap, loudness)[0, 1] > 0.6


def test_non_ascii_name_with_spaces(bad_results):
    out, results = bad_results
    result = results["good clip é 1"]
    assert result.ok and (out / "good clip é 1" / "meta.json").is_file()
    assert result.n_frames == 50


@pytest.mark.parametrize("name, problem", [
    ("corrupt", "cannot be opened as a video"),
    ("truncated", "cannot be opened as a video"),
    ("audio_only", "has no video stream"),
    ("silent", "has no audio stream"),
    ("noface", "only 0 of 50 frames have a face"),
    ("tiny", "at least 11 are needed"),
])
def test_unusable_clip_is_skipped_with_reason(bad_results, name, problem):
    out, results = bad_results
    result = results[name]
    assert not result.ok
    assert problem in result.reason and f"{name}.mp4" in result.reason
    assert not (out / name).exists()                                      # nothing half-written
    assert report(list(results.values()))["skipped_clips"][name] == result.reason


def test_audio_shorter_than_video_is_padded(bad_results):
    out, results = bad_results
    clip = ProcessedClip(out / "short_audio")
    samples, _ = sf.read(clip.audio_path)
    assert len(samples) == len(clip) * 640
    assert clip.meta["audio"]["padded_samples"] == len(clip) * 640 - 8000
    assert np.all(samples[8000:] == 0)


def test_audio_longer_48k_stereo_is_trimmed_to_mono_16k(bad_results):
    out, results = bad_results
    clip = ProcessedClip(out / "long_audio")
    samples, rate = sf.read(clip.audio_path)
    assert rate == 16000 and samples.ndim == 1 and len(samples) == len(clip) * 640
    assert clip.meta["audio"]["source_rate"] == 48000 and clip.meta["audio"]["source_channels"] == 2
    assert clip.meta["audio"]["trimmed_samples"] == 3 * 16000 - len(samples)


def test_variable_frame_rate_is_resampled_to_25fps(bad_results, bad_raw):
    out, results = bad_results
    clip = ProcessedClip(out / "vfr")
    duration = 3 * 10 * 0.020 + 3 * 10 * 0.050                        # 2.1 s of source frames
    assert abs(len(clip) - duration * 25) <= 1
    # Output frame k shows the source frame whose timestamp is nearest to k / 25 s.
    starts = np.cumsum([0] + [20 if (i // 10) % 2 == 0 else 50 for i in range(59)]) / 1000
    expected = [int(np.argmin(np.abs(starts - k / 25))) for k in range(len(clip))]
    mismatch = np.abs(np.asarray(clip.source_index) - expected)
    assert mismatch.max() <= 1 and (mismatch == 0).mean() > 0.9


def test_face_leaving_for_a_few_frames_is_flagged_and_kept(bad_results):
    out, results = bad_results
    clip = ProcessedClip(out / "face_leaves")
    assert len(clip) == 50                                              # timeline kept
    missing = np.nonzero(~np.asarray(clip.valid))[0]
    src = np.asarray(clip.source_index)
    assert set(missing) == set(np.nonzero((src >= 30) & (src < 36))[0])
    assert np.isnan(clip.landmarks[missing]).all()
    assert clip.meta["frames_without_face"] == len(missing)
    assert np.isfinite(clip.boxes).all()                                # the box carries over the gap


def test_stage_report_counts_every_clip(bad_results):
    _, results = bad_results
    summary = report(list(results.values()))
    assert summary["clips"] == 5 and summary["skipped"] == 6
    json.dumps(summary)                                                 # the report is valid JSON


def test_iter_frames_resamples_30_to_25_fps(demo_raw):
    frames = list(iter_frames(demo_raw / "astronaut.mp4", 25))
    assert len(frames) == 100
    assert [f.source_index for f in frames[:6]] == [0, 1, 2, 4, 5, 6]   # nearest source frame to k / 25


def test_load_audio_from_video_track_is_mono_16k_normalised(demo_raw):
    audio = load_audio(demo_raw / "astronaut.mp4")
    assert audio.sample_rate == 16000 and audio.source_rate == 44100
    assert abs(audio.duration - 4.0) < 0.05 and np.isclose(np.abs(audio.samples).max(), 1.0)


def test_box_smoother_averages_valid_neighbours_in_order():
    smoother, out = BoxSmoother(5), []
    boxes = [None, 1.0, 3.0, None, 5.0, 7.0, None]
    for i, b in enumerate(boxes):
        box = None if b is None else np.array([0, 0, b], np.float32)
        out += smoother.push(TrackedFrame(i, i, np.zeros((4, 4, 3), np.uint8), None, box))
    out += smoother.flush()
    assert [f.index for f, _ in out] == list(range(7))
    assert [float(b[2]) for _, b in out] == [2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0]


def test_identity_comes_from_the_name_prefix():
    from dithead.data.preprocess import clip_identity

    assert clip_identity("WRA_Obama__03") == "WRA_Obama"
    assert clip_identity("astronaut") == "astronaut"


def test_rotated_phone_video_is_decoded_upright(tmp_path):
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)                         # stored landscape, shown portrait
        for _ in range(3):
            image = np.zeros((32, 64, 3), np.uint8)
            image[:, :16] = 255                                  # a white band on the stored left edge
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    image = next(iter_frames(path)).image
    assert image.shape == (64, 32, 3)
    assert image[48:, :, 0].mean() > 200 and image[:40, :, 0].mean() < 50   # the band is now at the bottom


PEAK_WHILE_DECODING_SLOWLY = """
import resource, sys, time
from dithead.data.video_reader import iter_frames
for frame in iter_frames(sys.argv[1], 25):
    time.sleep(0.004)                      # a consumer slower than the decoder, as the sampler is
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_decoding_memory_does_not_grow_with_video_length(tmp_path):
    """A decoder that reads ahead of a slow consumer holds the video in memory (decord did: 2.3 GB for 20 s of
    1080p); iter_frames must keep a 4x longer video within 1.2x the peak memory."""
    peaks = {}
    for frames in (60, 240):
        path = tmp_path / f"{frames}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
            stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
            ramp = np.linspace(0, 255, 640, dtype=np.float32)
            for i in range(frames):
                image = np.broadcast_to(((ramp + 3 * i) % 256).astype(np.uint8)[None, :, None], (360, 640, 3))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
            container.mux(stream.encode())
        done = subprocess.run([sys.executable, "-c", PEAK_WHILE_DECODING_SLOWLY, str(path)], capture_output=True,
                              text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        peaks[frames] = int(done.stdout.split()[-1])
    # 180 more frames of 640x360 RGB held in memory would add 124 MB to a ~100 MB process.
    assert peaks[240] <= 1.2 * peaks[60], peaks


def test_preprocess_and_features_commands_end_to_end(demo_raw, tmp_path, capsys):
    """`dithead preprocess` then `dithead features` on one video, as the README shows; a file that is not a
    video is refused with its name."""
    from dithead.cli import main

    out = tmp_path / "processed"
    assert main(["preprocess", str(demo_raw / "astronaut.mp4"), "--out", str(out), "--size", "64",
                 "--smooth-frames", "5"]) == 0
    clip = ProcessedClip(out / "astronaut")
    assert clip.meta["size"] == 64 and len(clip) == clip.meta["n_frames"] > 0
    assert clip.crop(0).shape == (64, 64, 3) and np.asarray(clip.valid).mean() > 0.9
    assert main(["features", str(clip.directory), "--encoder", "mel", "--n-mels", "32"]) == 0
    features = np.load(clip.directory / "features.npy")
    assert features.shape == (len(clip), 32) and np.isfinite(features).all() and features.std() > 0

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello")
    assert main(["preprocess", str(not_a_video), "--out", str(out)]) == 1
    assert str(not_a_video) in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["astronaut"]          # nothing half-written beside it


def test_png_crop_store_is_lossless_with_random_access(tmp_path):
    """Ping-pong generation stores full frames as PNG and reads them back out of order: exactly."""
    from dithead.data.store import CropStore, CropStoreWriter

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(12)]
    for codec in ("png", "jpg"):
        with CropStoreWriter(tmp_path / codec, codec=codec) as writer:
            for frame in frames:
                writer.append(frame)
        store = CropStore(tmp_path / codec)
        assert len(store) == len(frames)
        exact = [np.array_equal(store[i], frames[i]) for i in (11, 0, 5, 5, 3, 10)]
        assert all(exact) if codec == "png" else not any(exact)      # JPEG, the training crops' codec, is lossy
    with pytest.raises(ValueError, match="'webp'"):
        CropStoreWriter(tmp_path / "webp", codec="webp")
