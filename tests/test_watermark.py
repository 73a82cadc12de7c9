"""Provenance watermark: invisible, survives H.264, rescaling and cropping, does not flag unmarked video."""

import itertools
import re
import runpy
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dithead.data.video_reader import iter_source_frames
from dithead.inference import watermark as wm
from dithead.inference.video_writer import DEFAULT_CRF, VideoWriter, write_video

N_FRAMES, SIZE = 12, 512
REPO = Path(__file__).resolve().parents[1]


def synthetic_clip(seed=0, n_frames=N_FRAMES, size=SIZE, step=1.0):
    """Smooth shading, a moving disc and fine texture: enough like video for H.264 to treat it as such."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) * (128 / size)
    texture = rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    frames = []
    for k in np.arange(n_frames) * step:
        base = np.stack([90 + 60 * np.sin(x / 23 + k / 9), 110 + 0.4 * y, 140 - 0.3 * x], -1)
        disc = ((x - 30 - 3 * k) ** 2 + (y - 64) ** 2 < 18 ** 2)[..., None] * np.array([80, -40, 20])
        frames.append(np.clip(base + disc + texture, 0, 255).astype(np.uint8))
    return frames


def decode(path, n=None):
    return [img for _, _, img in itertools.islice(iter_source_frames(path), n)]


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def reencode(frames, path, crf=28):
    write_video(path, frames, crf=crf)
    return decode(path)


def half(frame):
    return cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)


def crop_each_side(frame, fraction=0.1):
    h, w = frame.shape[:2]
    dy, dx = round(fraction * h), round(fraction * w)
    return frame[dy:h - dy, dx:w - dx]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wm")
    original = synthetic_clip()
    marked = [wm.embed(f) for f in original]
    paths = {"marked": tmp / "marked.mp4", "original": tmp / "original.mp4", "reencoded": tmp / "reencoded.mp4"}
    write_video(paths["marked"], marked, crf=DEFAULT_CRF, metadata=wm.provenance_tags("dit-head-test"))
    write_video(paths["original"], original, crf=DEFAULT_CRF)
    first_bitrate = av.open(str(paths["marked"])).bit_rate
    write_video(paths["reencoded"], decode(paths["marked"]), bitrate=first_bitrate // 2)
    return original, marked, paths


def test_mark_is_invisible(clips):
    original, marked, _ = clips
    quality = [psnr(m, o) for m, o in zip(marked, original)]
    print(f"embedding PSNR: mean {np.mean(quality):.1f} dB, min {min(quality):.1f} dB")
    assert min(quality) >= 40
    # Luma only: R, G and B change alike, so colour is untouched.
    change = marked[0].astype(int) - original[0]
    unclipped = (original[0] > 8).all(-1) & (original[0] < 247).all(-1)
    assert (change[..., 0] == change[..., 1])[unclipped].all() and (change[..., 1] == change[..., 2])[unclipped].all()


def test_mark_survives_h264_and_lower_bitrate_reencode(clips):
    _, marked, paths = clips
    raw = wm.detect(marked)
    encoded = wm.detect_frames(decode(paths["marked"]))
    reencoded = wm.detect_frames(decode(paths["reencoded"]))
    print(f"bit accuracy: raw {raw:.3f}, H.264 crf {DEFAULT_CRF} {encoded.bit_accuracy:.3f} "
          f"(per frame {np.mean(encoded.frame_accuracies):.3f}), re-encode at half bitrate {reencoded.bit_accuracy:.3f} "
          f"(per frame {np.mean(reencoded.frame_accuracies):.3f})")
    assert raw == 1.0
    assert encoded.watermarked and encoded.bit_accuracy >= 0.95 and encoded.crop == 0
    assert encoded.text == wm.DEFAULT_MESSAGE
    assert reencoded.watermarked


def test_mark_survives_half_downscale_and_crf28_reencode(clips, tmp_path):
    _, _, paths = clips
    attacked = reencode([half(f) for f in decode(paths["marked"])], tmp_path / "half.mp4")
    assert attacked[0].shape == (SIZE // 2, SIZE // 2, 3)
    found = wm.detect_frames(attacked)
    print(f"1/2 + crf 28: bit accuracy {found.bit_accuracy:.3f} (per frame {np.mean(found.frame_accuracies):.3f})")
    assert found.watermarked and found.bit_accuracy >= 0.95 and found.text == wm.DEFAULT_MESSAGE


@pytest.mark.parametrize("crf", [None, 28])
def test_mark_survives_a_10_percent_crop_from_each_side(clips, tmp_path, crf):
    _, _, paths = clips
    cropped = [crop_each_side(f) for f in decode(paths["marked"])]
    attacked = cropped if crf is None else reencode(cropped, tmp_path / "crop.mp4", crf)
    found = wm.detect_frames(attacked)
    print(f"10% crop, crf {crf}: bit accuracy {found.bit_accuracy:.3f}, read at crop {found.crop:.3f}")
    assert found.watermarked and found.bit_accuracy >= 0.95
    assert abs(found.crop - 0.1) <= wm.CROP_STEP
    # Read as if uncropped, the same frames do not carry the mark: the crop search is what finds it.
    assert wm.detect_frames(attacked, crops=[0.0]).bit_accuracy < wm.DETECTION_THRESHOLD


def test_unmarked_video_is_not_flagged(clips, tmp_path):
    _, _, paths = clips
    report = wm.detect_video(paths["original"])
    print(f"unmarked bit accuracy {report['bit_accuracy']}")
    assert not report["watermarked"]
    assert report["bit_accuracy"] < 0.75
    assert report["synthetic_tag"] is None
    cropped = reencode([crop_each_side(f) for f in decode(paths["original"])], tmp_path / "crop.mp4")
    assert not wm.detect_frames(cropped).watermarked


@pytest.mark.parametrize("name", ["real/hdtf_katiehill.mp4", "real/german_anchor.mp4"])
def test_unmarked_real_clip_reads_unmarked_and_marked_copy_survives(shared_clips, tmp_path, name):
    frames = decode(shared_clips / name, 25)
    unmarked = wm.detect_frames(frames)
    print(f"{name}: unmarked bit accuracy {unmarked.bit_accuracy:.3f}")
    assert not unmarked.watermarked and unmarked.bit_accuracy < 0.75
    attacked = reencode([half(wm.embed(f)) for f in frames[:10]], tmp_path / "half.mp4")
    assert wm.detect_frames(attacked).watermarked


def test_video_report_reads_mark_and_provenance_tags(clips):
    _, _, paths = clips
    report = wm.detect_video(paths["marked"])
    assert report["watermarked"] and report["frames"] == N_FRAMES
    assert report["synthetic_tag"] == "true" and report["generator_tag"] == "dit-head-test"


def test_video_report_with_max_frames_decodes_only_those(clips, monkeypatch):
    import dithead.data.video_reader

    _, _, paths = clips
    decoded = []

    def counting_frames(path, *args, **kwargs):
        for item in iter_source_frames(path, *args, **kwargs):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(dithead.data.video_reader, "iter_source_frames", counting_frames)
    report = wm.detect_video(paths["marked"], max_frames=5)
    assert report["frames"] == 5 and report["watermarked"]
    assert decoded == [0, 1, 2, 3, 4]                      # decoding stops there, not at the end of the video


def test_wrong_key_or_strength_does_not_read_the_mark(clips):
    _, marked, _ = clips
    assert wm.detect(marked, key=wm.DEFAULT_KEY + 1) < 0.8
    assert wm.detect_frames(marked).lattice_fit > 0.9
    # At a wrong strength the coefficients no longer sit on the lattices that are read.
    assert wm.detect_frames(marked, strength=wm.DEFAULT_STRENGTH * 2).lattice_fit < 0.2


def test_message_too_long_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 8 fit"):
        wm.message_bits("a message far longer than eight bytes")


def test_too_small_frame_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        wm.embed(np.zeros((16, 64, 3), np.uint8))


class UnmarkedMiddle:
    """Stand-in interpolator: the true in-between frame of the synthetic scene, which carries no mark."""

    name = "stand-in"

    def __init__(self):
        self.middles = iter(synthetic_clip(n_frames=2 * 6, size=256, step=0.5)[1::2])

    def middle(self, previous, frame):
        return next(self.middles)


def test_every_frame_of_the_interpolated_video_is_marked(tmp_path, monkeypatch):
    import dithead.inference.interpolation
    from dithead.inference.interpolation import interpolate_video

    samples = tmp_path / "outputs" / "samples"
    samples.mkdir(parents=True)
    mark = wm.marker("Tests!", 30.0)
    write_video(samples / "clip.mp4", (mark(f) for f in synthetic_clip(n_frames=6, size=256)), fps=25)
    (tmp_path / "params.yaml").write_text("interpolate: {method: flow, crf: 18}\n"
                                          "sample: {watermark: {message: Tests!, strength: 30.0}}\n"
                                          "weights: {rife: ''}\n")
    monkeypatch.setattr(dithead.inference.interpolation, "make_interpolator", lambda *a, **k: UnmarkedMiddle())
    # The frames as handed to the encoder: H.264 predicts an in-between frame from its marked
    # neighbours and may copy their mark, so only these show whether the stage marked it.
    written = []
    real_write = VideoWriter.write
    monkeypatch.setattr(VideoWriter, "write", lambda self, frame: written.append(frame) or real_write(self, frame))
    monkeypatch.chdir(tmp_path)
    assert runpy.run_path(str(REPO / "stages" / "interpolate.py"))["main"]() == 0
    bits = wm.message_bits("Tests!")
    for frames in (written, decode(tmp_path / "outputs" / "interpolated" / "clip.mp4")):
        found = wm.detect_frames(frames, bits, 30.0, crops=[0.0])
        per_frame = np.array(found.frame_accuracies)
        print(f"interpolated: {len(per_frame)} frames, per-frame bit accuracy min {per_frame.min():.3f}")
        assert len(per_frame) == 12
        assert (per_frame >= wm.DETECTION_THRESHOLD).all(), per_frame   # in-between frames (odd) too

    # The same check catches in-between frames left unmarked, which the pooled vote does not.
    written.clear()
    interpolate_video(samples / "clip.mp4", tmp_path / "unmarked.mp4", interpolator=UnmarkedMiddle(), progress=False)
    found = wm.detect_frames(written, bits, 30.0, crops=[0.0])
    per_frame = np.array(found.frame_accuracies)
    assert found.watermarked
    assert (per_frame[0::2] >= wm.DETECTION_THRESHOLD).all() and (per_frame[1:-1:2] < 0.75).all(), per_frame


def lattice_fit(output):
    return float(re.search(r"lattice fit (-?[0-9.]+)", output).group(1))


def run_detect(args, cwd, monkeypatch, capsys):
    """``dithead watermark detect ARGS`` in ``cwd``, in this process: (exit code, output)."""
    from dithead.cli import main

    monkeypatch.chdir(cwd)
    code = main(["watermark", "detect", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_watermark_detect_command_exit_codes_and_params(clips, tmp_path, monkeypatch, capsys):
    _, _, paths = clips
    custom = tmp_path / "custom.mp4"
    write_video(custom, (wm.marker("Tests!", 28.0)(f) for f in synthetic_clip(n_frames=6)), crf=DEFAULT_CRF)
    project = tmp_path / "project"
    project.mkdir()

    def detect(*args, cwd=tmp_path):
        return run_detect(args, cwd, monkeypatch, capsys)

    # Outside a project (no params.yaml): the defaults, which generate uses with the shipped params.
    assert detect(paths["marked"])[0] == 0
    code, out = detect(paths["original"])
    assert code == 3 and "no DiT-Head watermark found" in out
    assert detect(custom)[0] == 3
    # In a project whose params set another message and strength, those are what it looks for.
    (project / "params.yaml").write_text("sample: {watermark: {message: Tests!, strength: 28.0}}\n")
    code, out = detect(custom, cwd=project)
    assert code == 0 and "watermarked" in out and "'Tests!'" in out and "strength 28" in out
    assert lattice_fit(out) > 0.5
    assert detect(paths["marked"], cwd=project)[0] == 3
    assert detect(custom, "--params", project / "params.yaml")[0] == 0
    assert detect(custom, "--message", "Tests!", "--strength", 28)[0] == 0
    # At another strength the coefficients do not sit on the lattices it reads.
    assert lattice_fit(detect(custom, "--message", "Tests!")[1]) < 0.2
    # Errors are not verdicts: a missing video or params file exits 1 with a message.
    code, out = detect(tmp_path / "nowhere.mp4")
    assert code == 1 and "nowhere.mp4" in out
    assert detect(custom, "--params", tmp_path / "none.yaml")[0] == 1


def test_watermark_detect_command_exit_code_as_a_process(clips, tmp_path):
    _, _, paths = clips
    (tmp_path / "params.yaml").write_text(f"sample: {{watermark: {{message: DiT-Head, strength: {wm.DEFAULT_STRENGTH}}}}}\n")
    code = "import sys; from dithead.cli import main; sys.exit(main())"
    for video, expected in ((paths["marked"], 0), (paths["original"], 3)):
        proc = subprocess.run([sys.executable, "-c", code, "watermark", "detect", str(video)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == expected, proc.stdout + proc.stderr
