"""Provenance watermark: invisible, survives H.264, does not flag unmarked video."""

import av
import numpy as np
import pytest

from dithead.data.video_reader import iter_source_frames
from dithead.inference import watermark as wm
from dithead.inference.video_writer import DEFAULT_CRF, write_video

N_FRAMES, SIZE = 20, 128


def synthetic_clip(seed=0):
    """Smooth shading, a moving disc and fine texture: enough like video for H.264 to treat it as such."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    texture = rng.normal(0, 6, (SIZE, SIZE, 3)).astype(np.float32)
    frames = []
    for k in range(N_FRAMES):
        base = np.stack([90 + 60 * np.sin(x / 23 + k / 9), 110 + 0.4 * y, 140 - 0.3 * x], -1)
        disc = ((x - 30 - 3 * k) ** 2 + (y - 64) ** 2 < 18 ** 2)[..., None] * np.array([80, -40, 20])
        frames.append(np.clip(base + disc + texture, 0, 255).astype(np.uint8))
    return frames


def decode(path):
    return [img for _, _, img in iter_source_frames(path)]


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


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
    print(f"embedding PSNR: mean {np.mean(quality):.1f} dB")
    assert min(quality) > 44


def test_mark_survives_h264_and_lower_bitrate_reencode(clips):
    _, marked, paths = clips
    raw = wm.detect(marked)
    encoded = wm.detect_frames(decode(paths["marked"]))
    reencoded = wm.detect_frames(decode(paths["reencoded"]))
    print(f"bit accuracy: raw {raw:.3f}, H.264 crf {DEFAULT_CRF} {encoded.bit_accuracy:.3f} "
          f"(per frame {np.mean(encoded.frame_accuracies):.3f}), re-encode at half bitrate {reencoded.bit_accuracy:.3f} "
          f"(per frame {np.mean(reencoded.frame_accuracies):.3f})")
    assert raw == 1.0
    assert encoded.watermarked and encoded.bit_accuracy >= 0.95
    assert encoded.text == wm.DEFAULT_MESSAGE
    assert reencoded.watermarked


def test_unmarked_video_is_not_flagged(clips):
    _, _, paths = clips
    report = wm.detect_video(paths["original"])
    print(f"unmarked bit accuracy {report['bit_accuracy']}")
    assert not report["watermarked"]
    assert report["bit_accuracy"] < 0.75
    assert report["synthetic_tag"] is None


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


def test_wrong_key_does_not_read_the_mark(clips):
    _, marked, _ = clips
    assert wm.detect(marked, key=wm.DEFAULT_KEY + 1) < 0.8


def test_message_too_long_is_a_clear_error():
    with pytest.raises(ValueError, match="at most 8 fit"):
        wm.message_bits("a message far longer than eight bytes")
