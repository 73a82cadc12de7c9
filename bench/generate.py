"""`dithead generate` end to end on a 1080p phone video: time per phase, and peak memory against length.

    python bench/generate.py --models models [--params params.yaml]
        [--video ../shared/clips/demo1.mp4 --audio ../shared/clips/demo1_driving.wav]
        [--repeat 4] [--steps 5] [--interpolate]

The default input is a real phone video, 1080x1920 HEVC at 25 fps (10 s), with
9.6 s of driving speech; the long input is the video and the audio each played
``--repeat`` times in a row. Each run is a fresh `dithead generate` process,
whose peak resident memory is read from the kernel (``RUSAGE_CHILDREN``).
Target: long / short <= 1.2. Few sampling steps by default: memory does not
depend on them, and the run stays short.

Time per phase comes from generate's report (``--report``): decode,
preprocess, audio features, masking, masked encode, model, latent decode,
paste-back, watermark, interpolation, encode. The figure to watch is
``non_model_frames_per_second``: output frames per second of everything but
the networks, i.e. how fast generation could go with an infinitely fast
sampler (target: >= 25 at 1080p; preprocessing runs once per video and is
reported apart).

``--interpolate`` also runs the frame interpolation (what the `interpolate`
stage runs); the `sample` stage runs the same ``DiTHeadPipeline.sample_clip``
as `dithead generate`, so its memory follows these figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import repeat_video  # noqa: E402  (bench/preprocess.py)

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO.parent / "shared" / "clips"
PEAK_OF_CHILD = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def repeat_audio(audio: Path, times: int, out: Path) -> Path:
    samples, rate = sf.read(audio, dtype="float32")
    sf.write(out, np.concatenate([samples] * times), rate)
    return out


def run_generate(video: Path, audio: Path, out: Path, args) -> dict:
    command = [sys.executable, "-m", "dithead.cli", "generate", "--video", str(video), "--audio", str(audio),
               "--out", str(out), "--models", str(args.models), "--params", str(args.params),
               "--steps", str(args.steps)]
    if args.interpolate:
        command.append("--interpolate")
    report_path = out.with_suffix(".json")
    command += ["--report", str(report_path)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *command], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"dithead generate failed:\n{done.stderr[-2000:]}")
    report = json.loads(report_path.read_text())
    phases = {**report["phase_seconds"], **report.get("interpolation", {}).get("phase_seconds", {})}
    frames = report["frames"] * (2 if args.interpolate else 1)
    return {"peak_mb": round(int(done.stdout.split()[-1]) / 1024, 1), "seconds": round(time.perf_counter() - start, 1),
            "output_frames": frames, "phase_seconds": phases,
            "non_model_frames_per_second": non_model_rate(phases, frames)}


def non_model_rate(phases: dict[str, float], frames: int) -> float:
    """Output frames per second of the per-frame phases around the networks (preprocessing apart)."""
    from dithead.timing import MODEL_PHASES

    once = ("preprocess", "audio features")
    seconds = sum(s for name, s in phases.items() if name not in MODEL_PHASES and name not in once)
    return round(frames / seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--video", type=Path, default=CLIPS / "demo1.mp4")
    parser.add_argument("--audio", type=Path, default=CLIPS / "demo1_driving.wav")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--interpolate", action="store_true")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long_video = repeat_video(args.video, args.repeat, tmp / f"long{args.video.suffix}")
        long_audio = repeat_audio(args.audio, args.repeat, tmp / "long.wav")
        for name, video, audio in (("clip", args.video, args.audio), (f"{args.repeat}x", long_video, long_audio)):
            results[name] = {"audio_seconds": round(sf.info(audio).duration, 2),
                             **run_generate(video, audio, tmp / f"{name}.mp4", args)}
            print(name, results[name], flush=True)
    ratio = results[f"{args.repeat}x"]["peak_mb"] / results["clip"]["peak_mb"]
    print(json.dumps({"video": str(args.video), "interpolate": args.interpolate, "steps": args.steps, **results,
                      "peak_ratio": round(ratio, 3), "target": 1.2}, indent=2))


if __name__ == "__main__":
    main()
