"""DVC stage `sample`: held-out clips (and dubbing pairs) -> outputs/samples/*.mp4.

- outputs/samples/<clip>.mp4: the held-out part of every clip (models/dit/split.json:
  whole clips of held-out identities, or each clip's held-out end under a time
  split) driven by its own audio; `evaluate` compares these with the ground truth.
- outputs/samples/<clip>__<baseline>.mp4 for each of `sample.baselines`, scored
  against the same ground truth: `reference_copy` (the reference frame's lower
  face pasted with the same mask: no audio, no motion), `mismatched_audio` (the
  model driven by the same speech rotated by half the part: sync must collapse)
  and `silence` (the model driven by silence: the mouth should stay closed).
- outputs/samples/dubbed/<video>__<audio>.mp4: each `sample.dubbing` pair, the
  video of one clip driven by the audio of another.
- outputs/samples/report.json: per video, its clip, first frame, variant, frames,
  speed and reference frame (`evaluate` reads the clip, first frame and variant).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dithead.data.audio import write_wav
from dithead.data.audio_features import AudioFeatureSettings, audio_feature_extractor
from dithead.data.mask import MaskSettings
from dithead.data.store import ProcessedClip
from dithead.data.video_reader import VideoError
from dithead.device import default_device
from dithead.fileio import atomic_path, write_json
from dithead.inference.pipeline import DiTHeadPipeline, ModelDirectoryError, SampleSettings
from dithead.params import load_params, section_config
from dithead.stage import StageError, StagePaths, clear_errors

STAGE = "sample"
BASELINES = ("reference_copy", "mismatched_audio", "silence")
MIN_MISMATCH_SECONDS = 2.0      # a rotation shorter than this could leave the speech nearly in place


@dataclass
class Job:
    """One video to make: frames [start, stop) of clip ``video`` driven by ``audio`` (a clip's features, or
    a variant of the video's own), its reference frame taken from ``reference_frames`` ([start, stop) or None)."""

    video: str
    audio: str
    output: Path                      # relative to outputs/samples
    variant: str                      # generated | reference_copy | mismatched_audio | silence | dubbed
    frames: tuple[int, int] | None = None
    reference_frames: tuple[int, int] | None = None


def settings(params: dict) -> SampleSettings:
    return section_config(SampleSettings, params["sample"], "sample", seed=params["seed"],
                          min_ref_distance=params["dit"]["min_ref_distance"])


def jobs(settings: SampleSettings, paths: StagePaths) -> list[Job]:
    """Every video to make: the held-out parts, their baselines, the dubbing pairs."""
    split_file = paths.models / "dit" / "split.json"
    if not split_file.is_file():
        raise StageError(f"{split_file} not found (run the train_dit stage first)")
    split = json.loads(split_file.read_text())
    baselines = list(settings.baselines or [])
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise StageError(f"unknown sample.baselines {unknown}; choose from {', '.join(BASELINES)}")
    todo = []
    for name in split["validation"]:
        frames = tuple(split.get("validation_frames", {}).get(name) or ()) or None
        reference = tuple(split.get("train_frames", {}).get(name) or ()) or None
        todo.append(Job(name, name, Path(f"{name}.mp4"), "generated", frames, reference))
        todo += [Job(name, name, Path(f"{name}__{b}.mp4"), b, frames, reference) for b in baselines]
    for pair in settings.dubbing:
        video, audio = pair["video"], pair["audio"]
        todo.append(Job(video, audio, Path("dubbed") / f"{video}__{audio}.mp4", "dubbed"))
    for job in todo:
        for name in (job.video, job.audio):
            if not (paths.processed / name / "meta.json").is_file():
                raise StageError(f"clip '{name}' (sample.dubbing or split.json) is not in {paths.processed}")
            if not (paths.features / f"{name}.npy").is_file():
                raise StageError(f"no audio features for '{name}' in {paths.features} "
                                 "(run the extract_audio_features stage)")
    return todo


def driving_audio(job: Job, params: dict, paths: StagePaths, work: Path) -> tuple[np.ndarray, Path]:
    """Per-frame features and a wav of the audio that drives ``job``: the audio clip's own over the job's
    frames, rotated by half for ``mismatched_audio``, silence for ``silence``."""
    clip = ProcessedClip(paths.processed / job.audio)
    features = np.load(paths.features / f"{job.audio}.npy")
    samples, rate = sf.read(clip.audio_path, dtype="float32")
    fps = params["data"]["fps"]
    if job.frames is not None:
        start, stop = job.frames
        features = features[start:stop]
        samples = samples[int(round(start * rate / fps)):int(round(stop * rate / fps))]
    if job.variant == "mismatched_audio":
        shift = len(features) // 2
        if shift < MIN_MISMATCH_SECONDS * fps:
            raise StageError(f"clip '{job.video}' has {len(features)} held-out frames, too few to rotate "
                             f"its audio by {MIN_MISMATCH_SECONDS} s for the mismatched_audio baseline")
        features = np.roll(features, shift, axis=0)
        samples = np.roll(samples, int(round(shift * rate / fps)))
    elif job.variant == "silence":
        samples = np.zeros_like(samples)
        features = silence_features(params, samples, len(features))
    path = work / f"{job.output.stem}.wav"
    write_wav(path, samples, rate)
    return features, path


def silence_features(params: dict, samples: np.ndarray, n_frames: int) -> np.ndarray:
    """Features of ``samples`` (silence) from the encoder the DiT was trained with."""
    encoder = section_config(AudioFeatureSettings, params["audio_features"], "audio_features")
    extract = audio_feature_extractor(encoder, fps=params["data"]["fps"], sample_rate=params["data"]["sample_rate"],
                                      device=str(default_device()))
    return extract(samples, n_frames)


def make_video(pipe: DiTHeadPipeline, job: Job, params: dict, paths: StagePaths, out: Path, work: Path) -> dict:
    features, audio_path = driving_audio(job, params, paths, work)
    clip = ProcessedClip(paths.processed / job.video)
    common = dict(settings=settings(params), frames=job.frames, reference_frames=job.reference_frames)
    if job.variant == "reference_copy":
        report = pipe.paste_reference(clip, len(features), audio_path, out / job.output, **common)
    else:
        report = pipe.sample_clip(clip, features, audio_path, out / job.output, **common)
    return {**report, "variant": job.variant, "audio_clip": job.audio, "output": str(paths.samples / job.output)}


def main() -> int:
    params = load_params()
    # a missing model or input, a bad parameter; a source video that moved or changed since preprocess
    with clear_errors(STAGE, ModelDirectoryError, ValueError, VideoError):
        paths = section_config(StagePaths, params.get("paths"), "paths")
        p = settings(params)
        pipe = DiTHeadPipeline.from_pretrained(paths.models, weights=p.weights, solver=p.solver,
                                               precision=p.precision, device=default_device(),
                                               mask=section_config(MaskSettings, params["mask"], "mask"),
                                               fps=params["data"]["fps"])
        reports = {}
        with atomic_path(paths.samples) as out, tempfile.TemporaryDirectory() as work:
            out.mkdir(parents=True)
            for job in jobs(p, paths):
                (out / job.output).parent.mkdir(parents=True, exist_ok=True)
                reports[str(job.output)] = make_video(pipe, job, params, paths, out, Path(work))
            write_json(out / "report.json", reports)
    for rel, r in reports.items():
        speed = f", {r['frames_per_second']} frames/s" if "frames_per_second" in r else ""
        print(f"sample: {paths.samples / rel}: {r['frames']} frames{speed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
