"""The ``dithead`` command.

    dithead demo-data [--out data/raw]           write the bundled demo clips
    dithead profile smoke [--set-args]           apply a params profile (or print it as dvc exp run -S args)
    dithead preprocess VIDEO [--audio WAV] --out DIR
    dithead features DIR [--encoder mel]          audio features for a preprocessed clip
    dithead evaluate --pred P.mp4 --gt G.mp4      the paper's metrics on any pair of videos
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def cmd_demo_data(args) -> int:
    from .demo import make_demo_data

    for path in make_demo_data(args.out, args.seconds):
        print(path)
    return 0


def cmd_profile(args) -> int:
    from .params import apply_profile, load_profile, set_args

    if args.set_args:
        print(" ".join(set_args(load_profile(args.name))))
        return 0
    changed = apply_profile(args.name)
    print(f"params.yaml: applied profile '{args.name}' ({len(changed)} keys). Undo with `git checkout params.yaml`.")
    return 0


def cmd_preprocess(args) -> int:
    from .preprocess import PreprocessConfig, process_clip

    cfg = PreprocessConfig(fps=args.fps, size=args.size, margin=args.margin, smooth_frames=args.smooth_frames,
                           min_valid_frames=args.min_valid_frames)
    result = process_clip(args.video, args.out, cfg, audio=args.audio, name=args.name, progress=True)
    print(f"{Path(args.out) / result.name}: {result.n_frames} frames, {result.n_frames - result.n_valid} without a face")
    return 0


def cmd_features(args) -> int:
    import numpy as np
    import soundfile as sf

    from .features import default_device, frame_features, load_wav2vec2
    from .fileio import atomic_path
    from .store import ProcessedClip

    clip = ProcessedClip(args.clip)
    device = default_device()
    net = load_wav2vec2(args.model, device) if args.encoder == "wav2vec2" else None
    samples, rate = sf.read(clip.audio_path, dtype="float32")
    feats = frame_features(samples, rate, len(clip), clip.meta["fps"], args.encoder, n_mels=args.n_mels,
                           net=net, device=device)
    out = Path(args.out or Path(args.clip) / "features.npy")
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, feats)
    print(f"{out}: {feats.shape[0]} frames x {feats.shape[1]} features ({args.encoder})")
    return 0


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

    from .metrics.cli import add_evaluate_parser

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
    from .audio import AudioError
    from .features import FeatureModelError
    from .metrics.video import EvaluationError
    from .metrics.weights import MissingWeightsError, WeightsFormatError
    from .preprocess import ClipSkipped
    from .video import VideoError

    return (VideoError, AudioError, ClipSkipped, FeatureModelError, EvaluationError, MissingWeightsError,
            WeightsFormatError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
