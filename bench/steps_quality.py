"""Steps vs quality of a trained model: lip sync, mouth PSNR, LMD and speed per solver and step count.

Run in a project folder after `dvc repro` (a time split: the held-out end of a clip has ground truth):

    python bench/steps_quality.py --clip cnn_anchor
    python bench/steps_quality.py --clip cnn_anchor --configs ddim:250 ddim:50 ddim:25 dpmsolver++:20 dpmsolver++:10
    python bench/steps_quality.py --clip cnn_anchor --configs ddim:25:1 ddim:25:2 ddim:25:3   # audio guidance
    python bench/steps_quality.py --clip macron --seeds 0 1 2 \
        --configs dpmsolver++:10:4:evolving:per_frame dpmsolver++:10:4:fixed:shared      # reference and noise
    python bench/steps_quality.py --clip macron --weights raw       # the DiT's last weights, not their EMA
    python bench/steps_quality.py --clip cnn_anchor --seeds 0 1 2 --series metrics/series.npz   # + agreement of seeds

For each ``solver:steps[:audio_guidance[:reference[:noise[:temporal_smoothing]]]]`` (the ``sample:`` params where not
given) and each of ``--seeds`` it samples the clip's held-out frames (or the first
``--frames`` of them) with the trained models and the project's params, driven
by their own audio, times the sampling on this machine, and scores the video
against the source with the evaluation of the `evaluate` stage. Prints a
Markdown table and writes it with the raw figures to ``--out`` (JSON). With
several seeds (the sampling noise and the reference frame), it also gives each
config's mean and standard deviation of ``mouth_open_r``, and how far the seeds
agree: the mean r between two seeds' mouth openings, and the r of the
seed-averaged opening with the ground truth. When seeds agree with each other
no better than with the truth, the sampling noise of each frame is not what
limits the sync; when the average scores well above each seed, it is.
``--series`` also saves every run's per-frame openings (NumPy ``.npz``).
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
from dithead.metrics.lipsync import pearson
from dithead.params import load_params, section_config

QUALITY = ("mouth_open_r", "av_offset", "mouth_open_std_ratio", "mouth_psnr", "lmd", "psnr")
COLUMNS = ("audio_guidance", "reference", "noise", "temporal_smoothing", "seed") + QUALITY


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True, help="a clip of data/processed with a held-out part in models/dit/split.json")
    p.add_argument("--configs", nargs="+", default=["ddim:250", "ddim:50", "ddim:25", "dpmsolver++:20", "dpmsolver++:10"])
    p.add_argument("--seeds", type=int, nargs="+", help="sampling seeds, each config run once per seed (default: seed)")
    p.add_argument("--weights", choices=["ema", "raw"], help="the DiT's weights to sample with (default: sample.weights)")
    p.add_argument("--frames", type=int, default=0, help="score only the first N held-out frames (0: all)")
    p.add_argument("--out", default="metrics/steps_quality.json")
    p.add_argument("--series", help="also save each run's per-frame mouth openings and the truth's to this .npz")
    p.add_argument("--part", choices=["held_out", "train"], default="held_out",
                   help="train: score the last stretch of the training frames, as long as the held-out part, "
                        "references from the training frames before it (how well the model fits what it saw)")
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


def parse_config(text: str, sample: dict) -> dict:
    """``solver:steps[:audio_guidance[:reference[:noise[:temporal_smoothing]]]]``, the ``sample:`` params filling
    what is not given."""
    solver, steps, *rest = text.split(":")
    defaults = [sample.get("audio_guidance", 1.0), sample.get("reference", "evolving"),
                sample.get("noise", "per_frame"), sample.get("temporal_smoothing", 0.0)]
    guidance, reference, noise, smoothing = rest + defaults[len(rest):]
    return {"solver": solver, "steps": int(steps), "audio_guidance": float(guidance), "reference": reference,
            "noise": noise, "temporal_smoothing": float(smoothing)}


def run_config(config: dict, seed: int, params: dict, clip: ProcessedClip, frames: tuple[int, int],
               reference: tuple[int, int], work: Path) -> dict:
    fps = params["data"]["fps"]
    features = held_out_audio(clip, *frames, fps, work / "audio.wav")
    pipe = DiTHeadPipeline.from_pretrained("models", weights=params["sample"]["weights"], solver=config["solver"],
                                           precision=params["sample"]["precision"], fps=fps,
                                           mask=section_config(MaskSettings, params["mask"], "mask"))
    settings = SampleSettings(steps=config["steps"], audio_guidance=config["audio_guidance"],
                              reference=config["reference"], noise=config["noise"],
                              temporal_smoothing=config["temporal_smoothing"], seed=seed,
                              chunk_size=params["sample"]["chunk_size"],
                              min_ref_distance=params["dit"]["min_ref_distance"])
    video = work / "held_out.mp4"
    start = time.perf_counter()
    report = pipe.sample_clip(clip, features, work / "audio.wav", video, settings, frames=frames,
                              reference_frames=reference, progress=False)
    seconds = time.perf_counter() - start
    source = Path(clip.meta["source"]["video"])
    result = Evaluator({}, eval_config(params)).evaluate(video, source, gt_start=frames[0])
    metrics = result.report["metrics"]
    return {**config, "seed": seed, "weights": params["sample"]["weights"], "frames": report["frames"],
            "reference_frame": report["reference_frame"],
            "series": {k: result.per_frame[k] for k in ("mouth_open", "mouth_open_gt")},
            "seconds": round(seconds, 1), "frames_per_second": round(report["frames"] / seconds, 2),
            **{k: metrics.get(k) for k in COLUMNS if k in metrics}}


def config_key(row: dict) -> str:
    return (f"{row['solver']}:{row['steps']}:{row['audio_guidance']:g}:{row['reference']}:{row['noise']}"
            f":{row.get('temporal_smoothing', 0.0):g}")


def seed_agreement(rows: list[dict]) -> dict[str, float]:
    """Mean r between two seeds' openings, and the r of their mean opening with the ground truth."""
    openings = [r["series"]["mouth_open"] for r in rows]
    pairs = [pearson(a, b) for i, a in enumerate(openings) for b in openings[i + 1:]]
    return {"between_seeds_r": float(np.mean(pairs)),
            "seed_mean_r": pearson(np.nanmean(np.stack(openings), axis=0), rows[0]["series"]["mouth_open_gt"])}


def seed_summary(rows: list[dict]) -> str:
    """Per config over its seeds: mouth_open_r's mean and standard deviation, and the seeds' agreement."""
    by_config: dict[str, list[dict]] = {}
    for r in rows:
        by_config.setdefault(config_key(r), []).append(r)
    if all(len(v) < 2 for v in by_config.values()):
        return ""
    lines = ["| config | seeds | mouth_open_r mean | sd | r between seeds | r of the seeds' mean opening |",
             "|---|---|---|---|---|---|"]
    for key, runs in by_config.items():
        if len(runs) < 2:
            continue
        r = [run["mouth_open_r"] for run in runs]
        agree = seed_agreement(runs)
        lines.append(f"| {key} | {len(r)} | {np.mean(r):.3f} | {np.std(r, ddof=1):.3f} "
                     f"| {agree['between_seeds_r']:.3f} | {agree['seed_mean_r']:.3f} |")
    return "\n" + "\n".join(lines)


def write_series(path: str, rows: list[dict]) -> None:
    """Each run's per-frame mouth opening (``<config>:<seed>``) and the ground truth's (``truth``)."""
    arrays = {f"{config_key(r)}:{r['seed']}": r["series"]["mouth_open"] for r in rows}
    arrays["truth"] = rows[0]["series"]["mouth_open_gt"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def held_out_part(name: str) -> tuple[ProcessedClip, tuple[int, int], tuple[int, int]]:
    """Clip ``name``, its held-out frames [start, stop) and its training frames (where references come from)."""
    split = json.loads(Path("models/dit/split.json").read_text())
    if name not in split.get("validation_frames", {}):
        raise SystemExit(f"clip '{name}' has no held-out frames in models/dit/split.json (a time split)")
    frames = tuple(split["validation_frames"][name])
    return ProcessedClip(Path("data/processed") / name), frames, tuple(split["train_frames"][name])


def training_stretch(held_out: tuple[int, int], train: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The last training frames, as many as ``held_out`` has, and the training frames before them (references)."""
    length = min(held_out[1] - held_out[0], (train[1] - train[0]) // 2)
    return (train[1] - length, train[1]), (train[0], train[1] - length)


def write_results(out: str, clip: str, frames: tuple[int, int], rows: list[dict], text: str) -> None:
    """Print the Markdown table and write it with the raw rows to ``out`` (JSON)."""
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    plain = [{k: v for k, v in r.items() if k != "series"} for r in rows]
    Path(out).write_text(json.dumps({"clip": clip, "frames": list(frames), "rows": plain, "table": text},
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
    params["sample"]["weights"] = args.weights or params["sample"]["weights"]
    clip, (start, stop), reference = held_out_part(args.clip)
    if args.part == "train":
        (start, stop), reference = training_stretch((start, stop), reference)
    if args.frames:
        stop = min(stop, start + args.frames)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for text in args.configs:
            config = parse_config(text, params["sample"])
            for seed in args.seeds or [params["seed"]]:
                rows.append(run_config(config, seed, params, clip, (start, stop), reference, Path(work)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    write_results(args.out, args.clip, (start, stop), rows, table(rows) + seed_summary(rows))
    if args.series:
        write_series(args.series, rows)


if __name__ == "__main__":
    main()
