"""Watermark benchmark: invisibility (PSNR) and bit accuracy after H.264 encodes.

    python bench/watermark.py --video clip.mp4 [--frames 25] [--strength 24 32 40]

For each strength: PSNR of the marked frames, then the bit accuracy (all
frames together / mean of single frames) after encoding at crf 18 (the
default), 23 and 28, after re-encoding the crf-18 file at 1/2 and 1/4 of its
bitrate, and for the unmarked clip (should be about 0.5). If the
``imwatermark`` package (invisible-watermark) can be imported, its DWT-DCT
method is measured the same way for comparison (majority vote of per-frame
bits; it needs frames of at least 256×256).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from dithead.data.video_reader import iter_source_frames
from dithead.inference import watermark as wm
from dithead.inference.video_writer import write_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def decode(path: Path) -> list[np.ndarray]:
    return [img for _, _, img in iter_source_frames(path)]


def bitrate(path: Path, n_frames: int, fps: float = 25.0) -> float:
    return path.stat().st_size * 8 / (n_frames / fps)


def ours(strength: float):
    bits = wm.message_bits()

    def detect(frames):
        found = wm.detect_frames(frames, bits, strength)
        return found.bit_accuracy, float(np.mean(found.frame_accuracies))

    return (lambda f: wm.embed(f, bits, strength)), detect


def imwatermark_method():
    import cv2
    from imwatermark import WatermarkDecoder, WatermarkEncoder

    bits = wm.message_bits()
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", bits.tolist())

    def embed(frame):
        return cv2.cvtColor(encoder.encode(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), "dwtDct"), cv2.COLOR_BGR2RGB)

    def detect(frames):
        per_frame = np.array([WatermarkDecoder("bits", len(bits)).decode(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), "dwtDct")
                              for f in frames], dtype=np.uint8)
        vote = (per_frame.mean(0) > 0.5).astype(np.uint8)
        return float(np.mean(vote == bits)), float(np.mean(per_frame == bits))

    return embed, detect


def measure(name, embed, detect, frames, tmp: Path) -> None:
    start = time.perf_counter()
    marked = [embed(f) for f in frames]
    embed_ms = (time.perf_counter() - start) / len(frames) * 1e3
    quality = np.mean([psnr(m, f) for m, f in zip(marked, frames)])
    results = {}
    for crf in (18, 23, 28):
        path = tmp / f"crf{crf}.mp4"
        write_video(path, marked, crf=crf)
        results[f"crf{crf}"] = detect(decode(path))
    first = decode(tmp / "crf18.mp4")
    base_rate = bitrate(tmp / "crf18.mp4", len(frames))
    for fraction in (0.5, 0.25):
        path = tmp / "reencoded.mp4"
        write_video(path, first, bitrate=int(base_rate * fraction))
        results[f"re-encode x{fraction} ({bitrate(path, len(frames)) / 1e3:.0f} kbps)"] = detect(decode(path))
    write_video(tmp / "unmarked.mp4", frames, crf=18)
    results["unmarked crf18"] = detect(decode(tmp / "unmarked.mp4"))
    overhead = base_rate / bitrate(tmp / "unmarked.mp4", len(frames)) - 1
    print(f"\n{name}: PSNR {quality:.1f} dB, embed {embed_ms:.0f} ms/frame, crf-18 bitrate {overhead:+.0%} vs unmarked")
    for key, (together, single) in results.items():
        print(f"  {key:32s} bit accuracy {together:.3f} (single frames {single:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="any video; its first --frames frames are used")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--strength", type=float, nargs="+", default=[wm.DEFAULT_STRENGTH])
    args = parser.parse_args()
    frames = [img for i, _, img in iter_source_frames(args.video) if i < args.frames][:args.frames]
    print(f"{args.video}: {len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}")
    methods = {f"dct-qim strength {s:g}": ours(s) for s in args.strength}
    try:
        methods["invisible-watermark dwtDct"] = imwatermark_method()
    except ImportError:
        print("(imwatermark not importable: invisible-watermark not measured)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (embed, detect) in methods.items():
            measure(name, embed, detect, frames, Path(tmp))


if __name__ == "__main__":
    main()
