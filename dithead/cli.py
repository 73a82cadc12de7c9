"""The ``dithead`` command.

    dithead demo-data [--out data/raw]           write the bundled demo clips
    dithead profile smoke [--set-args]           apply a params profile (or print it as dvc exp run -S args)
    dithead preprocess VIDEO [--audio WAV] --out DIR
    dithead features DIR [--encoder mel]          audio features for a preprocessed clip
    dithead evaluate --pred P.mp4 --gt G.mp4      the paper's metrics on any pair of videos
    dithead generate --video V --audio A --out O  dub a video with trained models
    dithead watermark detect VIDEO                is VIDEO a DiT-Head output?
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from dithead import __version__


def cmd_demo_data(args) -> int:
    from dithead.data.demo_clips import make_demo_data

    for path in make_demo_data(args.out, args.seconds):
        print(path)
    return 0


def cmd_profile(args) -> int:
    from dithead.params import apply_profile, load_profile, set_args

    if args.set_args:
        print(" ".join(set_args(load_profile(args.name))))
        return 0
    changed = apply_profile(args.name)
    print(f"params.yaml: applied profile '{args.name}' ({len(changed)} keys). Undo with `git checkout params.yaml`.")
    return 0


def cmd_preprocess(args) -> int:
    from dithead.data.preprocess import PreprocessConfig, process_clip

    cfg = PreprocessConfig(fps=args.fps, size=args.size, margin=args.margin, smooth_frames=args.smooth_frames,
                           min_valid_frames=args.min_valid_frames)
    result = process_clip(args.video, args.out, cfg, audio=args.audio, name=args.name, progress=True)
    print(f"{Path(args.out) / result.name}: {result.n_frames} frames, {result.n_frames - result.n_valid} without a face")
    return 0


def cmd_features(args) -> int:
    import numpy as np
    import soundfile as sf

    from dithead.device import default_device
    from dithead.data.audio_features import AudioFeatureSettings, load_encoder, settings_features
    from dithead.fileio import atomic_path
    from dithead.data.store import ProcessedClip

    clip = ProcessedClip(args.clip)
    device = default_device()
    settings = AudioFeatureSettings(encoder=args.encoder, model=args.model, n_mels=args.n_mels)
    net = load_encoder(settings, device)
    samples, rate = sf.read(clip.audio_path, dtype="float32")
    feats = settings_features(samples, rate, len(clip), clip.meta["fps"], settings, net=net, device=device)
    out = Path(args.out or Path(args.clip) / "features.npy")
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, feats)
    print(f"{out}: {feats.shape[0]} frames x {feats.shape[1]} features ({args.encoder})")
    return 0


def cmd_generate(args) -> int:
    from dataclasses import replace

    from dithead.data.audio_features import AudioFeatureSettings, audio_feature_extractor
    from dithead.data.mask import MaskSettings
    from dithead.data.preprocess import PreprocessConfig
    from dithead.device import default_device
    from dithead.fileio import atomic_path, write_json
    from dithead.inference.pipeline import DiTHeadPipeline, SampleSettings
    from dithead.params import load_params, section_config

    params = load_params(args.params)
    device = default_device()
    extractor = audio_feature_extractor(
        section_config(AudioFeatureSettings, params["audio_features"], "audio_features"), fps=params["data"]["fps"],
        sample_rate=params["data"]["sample_rate"], device=device)
    settings = section_config(SampleSettings, params["sample"], "sample", seed=args.seed,
                              min_ref_distance=params["dit"]["min_ref_distance"])
    settings = replace(settings, steps=args.steps or settings.steps, solver=args.solver or settings.solver,
                       audio_guidance=settings.audio_guidance if args.audio_guidance is None else args.audio_guidance,
                       reference=args.reference or settings.reference, noise=args.noise or settings.noise,
                       temporal_smoothing=(settings.temporal_smoothing if args.temporal_smoothing is None
                                           else args.temporal_smoothing))
    pipe = DiTHeadPipeline.from_pretrained(args.models, weights=settings.weights, solver=settings.solver,
                                           precision=settings.precision, device=device,
                                           mask=section_config(MaskSettings, params["mask"], "mask"),
                                           fps=params["data"]["fps"], audio_features=extractor)
    # Crop exactly as the training data was cropped (margin, smoothing, size).
    preprocess = section_config(PreprocessConfig, params["preprocess"], "preprocess", fps=params["data"]["fps"],
                                sample_rate=params["data"]["sample_rate"])
    out = Path(args.out)
    with atomic_path(out) as tmp:
        report = pipe(args.video, args.audio, tmp, settings, preprocess)
        if args.interpolate:
            from dithead.inference.interpolation import InterpolateSettings, interpolate_video
            from dithead.inference.watermark import marker
            from dithead.metrics.weights import WeightPaths

            doubled = tmp.with_name(tmp.stem + ".50fps" + tmp.suffix)
            method = section_config(InterpolateSettings, params["interpolate"], "interpolate").method
            rife = section_config(WeightPaths, params.get("weights"), "weights").rife
            interpolation = interpolate_video(tmp, doubled, method, rife or None, device=device, crf=settings.crf,
                                              preset=settings.preset,
                                              mark=marker(settings.watermark.message, settings.watermark.strength))
            doubled.replace(tmp)
    factor = 2 if args.interpolate else 1
    print(f"{out}: {report['frames'] * factor} frames at {params['data']['fps'] * factor:g} fps "
          f"(sampled at {report['frames_per_second']} frames/s)")
    if args.interpolate:
        report["interpolation"] = asdict(interpolation)
    phases = {**report["phase_seconds"], **report.get("interpolation", {}).get("phase_seconds", {})}
    print("time per phase: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items()))
    if args.report:
        write_json(args.report, report)
    return 0


NOT_WATERMARKED = 3     # exit code of `dithead watermark detect` when the mark is not found (1: an error)


def watermark_settings(args) -> tuple[str, float]:
    """Message and strength to look for: --message/--strength, else params' sample.watermark, else the defaults.

    A missing params file is an error only when --params was given; without one,
    the defaults are what `dithead generate` embeds with the shipped params.yaml.
    """
    from dithead.inference.watermark import DEFAULT_MESSAGE, DEFAULT_STRENGTH
    from dithead.params import PARAMS_FILE, load_params

    message, strength = DEFAULT_MESSAGE, DEFAULT_STRENGTH
    if args.params is not None or Path(PARAMS_FILE).is_file():
        mark = (load_params(args.params or PARAMS_FILE).get("sample") or {}).get("watermark") or {}
        message, strength = mark.get("message", message), float(mark.get("strength", strength))
    return (args.message if args.message is not None else message,
            args.strength if args.strength is not None else strength)


def cmd_watermark_detect(args) -> int:
    from dithead.inference.watermark import detect_video

    message, strength = watermark_settings(args)
    report = detect_video(args.video, message=message, strength=strength, max_frames=args.max_frames)
    verdict = "watermarked (generated by DiT-Head)" if report["watermarked"] else "no DiT-Head watermark found"
    crop = f", read at a {report['crop']:.1%} crop per side" if report["watermarked"] and report["crop"] else ""
    print(f"{args.video}: {verdict}; bit accuracy {report['bit_accuracy']:.3f} over {report['frames']} frames "
          f"(threshold {report['threshold']}, message {message!r}, strength {strength:g}{crop}, "
          f"lattice fit {report['lattice_fit']:.2f}), "
          f"synthetic tag: {report['synthetic_tag']}")
    return 0 if report["watermarked"] else NOT_WATERMARKED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dithead", description="DiT-Head talking-head synthesis")
    parser.add_argument("--version", action="version", version=f"dithead {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write the bundled demo clips (a real face, mouth driven by the audio)")
    p.add_argument("--out", default="data/raw")
    p.add_argument("--seconds", type=float, default=4.0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("profile", help="apply profiles/NAME.yaml to params.yaml")
    p.add_argument("name")
    p.add_argument("--set-args", action="store_true", help="print `dvc exp run` -S arguments instead of editing")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("preprocess", help="face crops, landmarks, boxes and 16 kHz audio for one video")
    p.add_argument("video")
    p.add_argument("--audio", help="speech for the video (default: the video's own track)")
    p.add_argument("--out", required=True, help="output folder; the clip goes to OUT/<name>")
    p.add_argument("--name", help="clip name (default: the video's file name)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--margin", type=float, default=0.6)
    p.add_argument("--smooth-frames", type=int, default=9)
    p.add_argument("--min-valid-frames", type=int, default=11)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("features", help="per-frame audio features of a preprocessed clip")
    p.add_argument("clip", help="a preprocessed clip folder")
    p.add_argument("--encoder", choices=["mel", "wav2vec2"], default="mel")
    p.add_argument("--model", default="jonatasgrosman/wav2vec2-large-xlsr-53-english")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--out", help="output .npy (default: CLIP/features.npy)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("generate", help="dub a video with new speech using trained models")
    p.add_argument("--video", required=True, help="video of the person")
    p.add_argument("--audio", required=True, help="speech that drives the mouth (the output is as long as it)")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--models", default="models", help="folder with dit/, vqgan_masked/, vqgan_gt/")
    p.add_argument("--steps", type=int, help="sampling steps (default: sample.steps)")
    p.add_argument("--solver", choices=["ddim", "dpmsolver++"], help="default: sample.solver")
    p.add_argument("--audio-guidance", type=float, help="scale of the audio's effect on the mouth, 1 = off "
                                                        "(default: sample.audio_guidance)")
    p.add_argument("--reference", choices=["evolving", "fixed"],
                   help="each frame's reference: the previous frame's latent (evolving, the paper) or the first "
                        "frame's (fixed); default: sample.reference")
    p.add_argument("--noise", choices=["per_frame", "shared"],
                   help="each frame's own starting noise, or one for all (shared); default: sample.noise")
    p.add_argument("--temporal-smoothing", type=float, metavar="SIGMA",
                   help="Gaussian filter of the sampled latents over time, sigma in frames, 0 = off; "
                        "default: sample.temporal_smoothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interpolate", action="store_true", help="also double the frame rate (50 fps)")
    p.add_argument("--params", default="params.yaml", help="the params the models were trained with")
    p.add_argument("--report", help="also write the report (frames, seconds per phase) to this JSON file")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("watermark", help="provenance watermark of generated videos")
    wsub = p.add_subparsers(dest="action", required=True)
    d = wsub.add_parser("detect", help="is VIDEO a DiT-Head output? (exit 0: yes, 3: no, 1: error)")
    d.add_argument("video")
    d.add_argument("--max-frames", type=int, default=250)
    d.add_argument("--params", help="read the message and strength from this params file's sample.watermark "
                                    "(default: ./params.yaml if present, else the built-in defaults)")
    d.add_argument("--message", help="the embedded message (default: sample.watermark.message)")
    d.add_argument("--strength", type=float, help="the embedding strength (default: sample.watermark.strength)")
    d.set_defaults(func=cmd_watermark_detect)

    from dithead.metrics.cli import add_evaluate_parser

    add_evaluate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as exc:
        # These name the file and the problem; a traceback would only hide that.
        print(f"dithead {args.command}: error: {exc}", file=sys.stderr)
        return 1


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input or setup (bugs still show a traceback)."""
    from dithead.data.audio import AudioError
    from dithead.data.audio_features import FeatureModelError
    from dithead.data.preprocess import ClipSkipped
    from dithead.data.video_reader import VideoError
    from dithead.inference.pipeline import ModelDirectoryError
    from dithead.metrics.evaluation import EvaluationError
    from dithead.metrics.weights import MissingWeightsError, WeightsFormatError
    from dithead.params import ParamsError

    return (VideoError, AudioError, ClipSkipped, FeatureModelError, EvaluationError, MissingWeightsError,
            WeightsFormatError, ModelDirectoryError, ParamsError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
