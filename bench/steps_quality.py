"""Steps vs quality of a trained model: lip sync, mouth PSNR, LMD and speed per solver and step count.

Run in a project folder after `dvc repro` (a time split: the held-out end of a clip has ground truth):

    python bench/steps_quality.py --clip cnn_anchor
    python bench/steps_quality.py --clip cnn_anchor --configs ddim:250 ddim:50 ddim:25 dpmsolver++:20 dpmsolver++:10
    python bench/steps_quality.py --clip cnn_anchor --configs ddim:25:1 ddim:25:2 ddim:25:3   # audio guidance

For each ``solver:steps[:audio_guidance]`` (guidance: sample.audio_guidance unless given)
it samples the clip's held-out frames (or the first
``--frames`` of them) with the trained models and the project's params, driven
by their own audio, times the sampling on this machine, and scores the video
against the source with the evaluation of the `evaluate` stage. Prints a
Markdown table and writes it with the raw figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from dithead.data.audio import write_wav
from dithead.data.mask import MaskSettings
from dithead.data.store import ProcessedClip
from dithead.inference.pipeline import DiTHeadPipeline, SampleSettings
from dithead.metrics.evaluation import EvalConfig, Evaluator
from dithead.params import load_params, section_config

COLUMNS = ("audio_guidance", "mouth_open_r", "av_offset", "mouth_open_std_ratio", "mouth_psnr", "lmd", "psnr")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True, help="a clip of data/processed with a held-out part in models/dit/split.json")
    p.add_argument("--configs", nargs="+", default=["ddim:250", "ddim:50", "ddim:25", "dpmsolver++:20", "dpmsolver++:10"])
    p.add_argument("--frames", type=int, default=0, help="score only the first N held-out frames (0: all)")
    p.add_argument("--out", default="metrics/steps_quality.json")
    return p.parse_args()


def held_out_audio(clip: ProcessedClip, start: int, stop: int, fps: float, path: Path) -> np.ndarray:
    """The held-out part's features, and its audio written to ``path`` for muxing."""
    samples, rate = sf.read(clip.audio_path, dtype="float32")
    write_wav(path, samples[int(round(start * rate / fps)):int(round(stop * rate / fps))], rate)
    return np.load(Path("data/features") / f"{clip.name}.npy")[start:stop]


def eval_config(params: dict) -> EvalConfig:
    """The evaluate stage's crops and lip-sync settings; the weight-free image metrics only."""
    e = params["evaluate"]
    return EvalConfig(metrics=["psnr", "lmd", "mouth_psnr"], fps=params["data"]["fps"], crop_size=e["crop_size"],
                      crop_margin=e["crop_margin"], smooth_frames=e["smooth_frames"], mouth_margin=e["mouth_margin"])


def run_config(solver: str, steps: int, guidance: float, params: dict, clip: ProcessedClip, frames: tuple[int, int],
               reference: tuple[int, int], work: Path) -> dict:
    fps = params["data"]["fps"]
    features = held_out_audio(clip, *frames, fps, work / "audio.wav")
    pipe = DiTHeadPipeline.from_pretrained("models", weights=params["sample"]["weights"], solver=solver,
                                           precision=params["sample"]["precision"], fps=fps,
                                           mask=section_config(MaskSettings, params["mask"], "mask"))
    settings = SampleSettings(steps=steps, audio_guidance=guidance, seed=params["seed"],
                              chunk_size=params["sample"]["chunk_size"],
                              min_ref_distance=params["dit"]["min_ref_distance"])
    video = work / f"{solver}_{steps}_{guidance:g}.mp4"
    start = time.perf_counter()
    report = pipe.sample_clip(clip, features, work / "audio.wav", video, settings, frames=frames,
                              reference_frames=reference, progress=False)
    seconds = time.perf_counter() - start
    source = Path(clip.meta["source"]["video"])
    metrics = Evaluator({}, eval_config(params)).evaluate(video, source, gt_start=frames[0]).report["metrics"]
    return {"solver": solver, "steps": steps, "frames": report["frames"], "seconds": round(seconds, 1),
            "frames_per_second": round(report["frames"] / seconds, 2), **{k: metrics.get(k) for k in COLUMNS},
            "audio_guidance": guidance}


def held_out_part(name: str) -> tuple[ProcessedClip, tuple[int, int], tuple[int, int]]:
    """Clip ``name``, its held-out frames [start, stop) and its training frames (where references come from)."""
    split = json.loads(Path("models/dit/split.json").read_text())
    if name not in split.get("validation_frames", {}):
        raise SystemExit(f"clip '{name}' has no held-out frames in models/dit/split.json (a time split)")
    frames = tuple(split["validation_frames"][name])
    return ProcessedClip(Path("data/processed") / name), frames, tuple(split["train_frames"][name])


def write_results(out: str, clip: str, frames: tuple[int, int], rows: list[dict], text: str) -> None:
    """Print the Markdown table and write it with the raw rows to ``out`` (JSON)."""
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"clip": clip, "frames": list(frames), "rows": rows, "table": text},
                                    indent=2) + "\n")


def table(rows: list[dict]) -> str:
    head = "| solver | steps | " + " | ".join(COLUMNS) + " | frames/s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append(f"| {r['solver']} | {r['steps']} | " + " | ".join(cells) + f" | {r['frames_per_second']} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    params = load_params()
    clip, (start, stop), reference = held_out_part(args.clip)
    if args.frames:
        stop = min(stop, start + args.frames)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for config in args.configs:
            solver, steps, *guidance = config.split(":")
            guidance = float(guidance[0]) if guidance else params["sample"].get("audio_guidance", 1.0)
            rows.append(run_config(solver, int(steps), guidance, params, clip, (start, stop), reference, Path(work)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    write_results(args.out, args.clip, (start, stop), rows, table(rows))


if __name__ == "__main__":
    main()
