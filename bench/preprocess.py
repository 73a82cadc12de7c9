"""Benchmark: preprocess speed and memory on a real clip, next to decode-only speed.

    python bench/preprocess.py [--video ../shared/clips/demo1.mp4] [--size 256] [--repeat 4]

Reports, for the clip and for the same clip repeated ``--repeat`` times:
frames/s of decode only (dithead.video's decoder, every source frame), frames/s of preprocess
(decode + resample + face tracking + crop + store), their ratio, and peak
resident memory of each run (each run in a fresh process, so peaks do not mix).
Also the crop store's size and random-read speed for jpg and png.
Targets: preprocess >= 0.5 x decode-only speed per core; peak memory of the
repeated clip within 1.2 x that of the single clip.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "clips" / "demo1.mp4"


def repeat_video(video: Path, times: int, out: Path) -> Path:
    """The clip played ``times`` times in a row (stream copy, no re-encode)."""
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{video.resolve()}'\n" for _ in range(times)))
    import av

    with av.open(str(listing), format="concat", options={"safe": "0"}) as src, av.open(str(out), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        for packet in src.demux():
            if packet.dts is None or packet.stream.index not in streams:
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    return out


def _decode_only(video: str, queue) -> None:
    from dithead.data.video_reader import iter_source_frames

    start = time.perf_counter()
    n = sum(1 for _ in iter_source_frames(video))
    queue.put({"frames": n, "seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds(), "peak_mb": _peak_mb()})


def _preprocess(video: str, size: int, codec: str, out: str, queue) -> None:
    from dithead.data.preprocess import PreprocessConfig, process_clip

    start = time.perf_counter()
    result = process_clip(video, out, PreprocessConfig(size=size, codec=codec), name="clip")
    queue.put({"frames": result.n_frames, "valid": result.n_valid, "seconds": time.perf_counter() - start,
               "cpu_seconds": _cpu_seconds(), "peak_mb": _peak_mb()})


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)   # all threads of this process
    return usage.ru_utime + usage.ru_stime


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def store_read_speed(clip_dir: Path, reads: int = 500) -> dict:
    import numpy as np

    from dithead.data.store import CropStore

    store = CropStore(clip_dir)
    order = np.random.default_rng(0).integers(0, len(store), reads)
    start = time.perf_counter()
    for i in order:
        store[int(i)]
    seconds = time.perf_counter() - start
    size = (clip_dir / "crops.bin").stat().st_size
    return {"random_reads_per_s": round(reads / seconds, 1), "bytes_per_frame": int(size / len(store))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"{args.video}: not found (pass --video)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core figures
    figures = {"video": str(args.video), "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long_video = repeat_video(args.video, args.repeat, tmp / f"repeat{args.repeat}{args.video.suffix}")
        for label, video in (("x1", args.video), (f"x{args.repeat}", long_video)):
            decode = in_fresh_process(_decode_only, str(video))
            prep = in_fresh_process(_preprocess, str(video), args.size, "jpg", str(tmp / label))
            figures[label] = {
                "decode_fps": round(decode["frames"] / decode["seconds"], 1),
                "preprocess_fps": round(prep["frames"] / prep["seconds"], 1),
                "decode_peak_mb": round(decode["peak_mb"]), "preprocess_peak_mb": round(prep["peak_mb"]),
                "frames": prep["frames"], "frames_with_face": prep["valid"],
            }
            # Per core: source frames per CPU-second (threads included), so the ratio does not
            # depend on how many cores each run managed to use.
            decode_per_core = decode["frames"] / decode["cpu_seconds"]
            prep_per_core = decode["frames"] / prep["cpu_seconds"]
            figures[label].update(decode_fps_per_core=round(decode_per_core, 1),
                                  preprocess_fps_per_core=round(prep_per_core, 1),
                                  speed_ratio_per_core=round(prep_per_core / decode_per_core, 3))
        figures["memory_ratio_repeat_vs_single"] = round(
            figures[f"x{args.repeat}"]["preprocess_peak_mb"] / figures["x1"]["preprocess_peak_mb"], 3)
        png = in_fresh_process(_preprocess, str(args.video), args.size, "png", str(tmp / "png"))
        figures["store"] = {"jpg": store_read_speed(tmp / "x1" / "clip"), "png": store_read_speed(tmp / "png" / "clip"),
                            "png_preprocess_fps": round(png["frames"] / png["seconds"], 1)}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
