"""DVC stage `sample`: held-out clips (and dubbing pairs) -> outputs/samples/*.mp4.

- outputs/samples/<clip>.mp4: every held-out clip (models/dit/split.json)
  driven by its own audio; `evaluate` compares these with the ground truth.
- outputs/samples/dubbed/<video>__<audio>.mp4: each `sample.dubbing` pair, the
  video of one clip driven by the audio of another.
- outputs/samples/report.json: frames, speed and reference frame per video.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dithead.device import default_device
from dithead.fileio import atomic_path, write_json
from dithead.generate import DiTHeadPipeline, ModelDirectoryError, SampleSettings
from dithead.params import load_params
from dithead.store import ProcessedClip
from dithead.video import VideoError

PROCESSED = Path("data/processed")
FEATURES = Path("data/features")
MODELS = Path("models")
OUTPUT = Path("outputs/samples")


def settings(params: dict) -> SampleSettings:
    p = params["sample"]
    return SampleSettings(steps=p["steps"], seed=params["seed"], chunk_size=p["chunk_size"], eta=p["eta"],
                          crf=p["crf"], watermark_message=p["watermark"]["message"],
                          watermark_strength=p["watermark"]["strength"],
                          min_reference_distance=params["dit"]["min_ref_distance"])


def jobs(params: dict) -> list[tuple[str, str, Path]]:
    """(video clip, audio clip, output path relative to outputs/samples) for every video to make."""
    split_file = MODELS / "dit" / "split.json"
    if not split_file.is_file():
        raise SystemExit(f"sample: {split_file} not found (run the train_dit stage first)")
    split = json.loads(split_file.read_text())
    todo = [(name, name, Path(f"{name}.mp4")) for name in split["validation"]]
    for pair in params["sample"]["dubbing"]:
        video, audio = pair["video"], pair["audio"]
        todo.append((video, audio, Path("dubbed") / f"{video}__{audio}.mp4"))
    for video, audio, _ in todo:
        for name in (video, audio):
            if not (PROCESSED / name / "meta.json").is_file():
                raise SystemExit(f"sample: clip '{name}' (sample.dubbing or split.json) is not in {PROCESSED}")
            if not (FEATURES / f"{name}.npy").is_file():
                raise SystemExit(f"sample: no audio features for '{name}' in {FEATURES} "
                                 "(run the extract_audio_features stage)")
    return todo


def main() -> int:
    params = load_params()
    p = params["sample"]
    try:
        pipe = DiTHeadPipeline.from_pretrained(MODELS, weights=p["weights"], solver=p["solver"],
                                               precision=p["precision"], device=default_device(),
                                               mask_kernel_size=params["mask"]["kernel_size"],
                                               mask_sigma=params["mask"]["sigma"], fps=params["data"]["fps"])
    except ModelDirectoryError as error:
        raise SystemExit(f"sample: {error}") from None
    reports = {}
    with atomic_path(OUTPUT) as out:
        out.mkdir(parents=True)
        for video, audio, rel in jobs(params):
            audio_clip = ProcessedClip(PROCESSED / audio)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                reports[str(rel)] = pipe.sample_clip(ProcessedClip(PROCESSED / video),
                                                     np.load(FEATURES / f"{audio}.npy"), audio_clip.audio_path,
                                                     out / rel, settings(params))
            except VideoError as error:   # the source video moved or changed since preprocess
                raise SystemExit(f"sample: {error}") from None
            reports[str(rel)]["output"] = str(OUTPUT / rel)
        write_json(out / "report.json", reports)
    for rel, r in reports.items():
        print(f"sample: {OUTPUT / rel}: {r['frames']} frames, {r['frames_per_second']} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
