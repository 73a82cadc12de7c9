"""Streaming H.264 writer: frame count, fps, audio length and tags of what it writes."""

import av
import numpy as np
import pytest
import soundfile as sf

from dithead.inference.video_writer import EncodeError, VideoWriter, write_video

FPS = 25


def tone(path, seconds, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(str(path), np.stack([wave] * channels, 1) if channels > 1 else wave, rate)
    return path


def frames(n, h=64, w=64):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n))


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        n_decoded = sum(1 for _ in c.decode(video=0))
        return {
            "frames": n_decoded, "fps": float(v.average_rate), "size": (v.width, v.height), "pix_fmt": v.codec_context.pix_fmt,
            "codec": v.codec_context.name, "video_s": float(v.duration * v.time_base),
            "audio_s": float(a.duration * a.time_base) if a else None, "audio_rate": a.sample_rate if a else None,
            "audio_codec": a.codec_context.name if a else None, "tags": dict(c.metadata),
        }


@pytest.mark.parametrize("audio_seconds", [2.6, 1.3])      # longer than the video (cut), shorter (padded)
def test_video_has_right_frames_fps_and_audio_length(tmp_path, audio_seconds):
    wav = tone(tmp_path / "a.wav", audio_seconds)
    out = tmp_path / "v.mp4"
    n = write_video(out, frames(50), fps=FPS, audio=wav, metadata={"synthetic": "true", "generator": "test"})
    info = probe(out)
    assert n == 50 and info["frames"] == 50
    assert info["fps"] == FPS and info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["audio_codec"] == "aac" and info["audio_rate"] == 16000
    assert abs(info["audio_s"] - 50 / FPS) <= 1 / FPS
    assert info["tags"]["synthetic"] == "true" and info["tags"]["generator"] == "test"


def test_audio_from_a_video_file_keeps_stereo(tmp_path):
    first = tmp_path / "first.mp4"
    write_video(first, frames(25), audio=tone(tmp_path / "s.wav", 1.0, rate=44100, channels=2))
    second = tmp_path / "second.mp4"
    write_video(second, frames(25), audio=first)          # e.g. interpolation keeps the input's audio
    info = probe(second)
    assert info["audio_rate"] == 44100 and abs(info["audio_s"] - 1.0) <= 1 / FPS
    with av.open(str(second)) as c:
        assert c.streams.audio[0].codec_context.channels == 2


def test_odd_frame_size_is_padded_to_even(tmp_path):
    out = tmp_path / "odd.mp4"
    write_video(out, frames(3, h=63, w=65))
    assert probe(out)["size"] == (66, 64)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(EncodeError, match="nope.wav: audio file not found"):
        VideoWriter(tmp_path / "x.mp4", audio=tmp_path / "nope.wav")
    assert not (tmp_path / "x.mp4").exists()                # no half-written video beside the error
    with VideoWriter(tmp_path / "y.mp4") as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
        with pytest.raises(EncodeError, match="frame 1 is 32x32, earlier frames were 64x64"):
            writer.write(np.zeros((32, 32, 3), np.uint8))


def test_unreadable_audio_leaves_no_output_file(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    with pytest.raises(EncodeError, match="notes.wav: cannot be opened as audio"):
        write_video(tmp_path / "v.mp4", frames(3), audio=not_audio)
    assert list(tmp_path.iterdir()) == [not_audio]
