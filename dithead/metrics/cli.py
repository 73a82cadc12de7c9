"""``dithead evaluate --pred P.mp4 --gt G.mp4 [--out metrics.json]``: the paper's metrics on any pair of videos.

So that other methods' outputs (Wav2Lip, MuseTalk, ...) can be scored on the
same clips the same way. Pretrained weights come from the ``weights:``
section of ``--params`` (default: ./params.yaml when present), each
overridable by its own flag. The weight-free lip-sync metrics (mouth-opening
agreement, THEval's lip sync / silent lip stability / lip dynamics) are
always reported. ``--gt-start K`` compares with the ground truth from its
frame K on (a clip split in time whose later part was generated).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dithead.metrics.evaluation import METRICS, EvalConfig

WEIGHT_FLAGS = {
    "lpips_backbone": "torchvision's alexnet-owt-7be5be79.pth (LPIPS)",
    "lpips_linear": "the lpips package's weights/v0.1/alex.pth (LPIPS)",
    "inception_fid": "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (FID)",
    "syncnet": "syncnet_python's syncnet_v2.model (LSE-C, LSE-D)",
}


def add_evaluate_parser(subparsers) -> None:
    defaults = EvalConfig()
    p = subparsers.add_parser("evaluate", help="PSNR, SSIM, LPIPS, FID, LSE-C/D, LMD and weight-free lip sync "
                                               "of a video against its ground truth")
    p.add_argument("--pred", required=True, help="generated video")
    p.add_argument("--gt", required=True, help="ground-truth video")
    p.add_argument("--out", help="write the full report here (JSON)")
    p.add_argument("--audio", help="speech for LSE-C/LSE-D and lip sync (default: the generated video's own track)")
    p.add_argument("--gt-audio", help="the ground truth's speech, for THEval's ground-truth values "
                                      "(default: its own track)")
    p.add_argument("--side-by-side", help="also write ground truth | generated | difference crops to this .mp4")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    p.add_argument("--params", default="params.yaml", help="read pretrained weight paths from its weights: section")
    for key, what in WEIGHT_FLAGS.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, help=f"path of {what}")
    p.add_argument("--fps", type=float, default=defaults.fps)
    p.add_argument("--crop-size", type=int, default=defaults.crop_size)
    p.add_argument("--crop-margin", type=float, default=defaults.crop_margin)
    p.add_argument("--max-frames", type=int, default=0, help="compare at most this many frames (0: all)")
    p.add_argument("--gt-start", type=int, default=0,
                   help="ground-truth frame (at --fps) shown with the generated video's first frame")
    p.add_argument("--lipsync-max-offset", type=int, default=defaults.lipsync_max_offset,
                   help="mouth-opening offsets searched for av_offset, frames each way")
    p.add_argument("--boxes", choices=("auto", "shared", "own"), default=defaults.boxes,
                   help="crop both videos at the ground truth's face (shared) or each at its own")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.set_defaults(func=cmd_evaluate)


def weights_from(params: str | os.PathLike, args: argparse.Namespace) -> dict[str, str]:
    """The params file's ``weights:`` section (when the file exists), overridden by the weight flags."""
    weights = {}
    if Path(params).is_file():
        from dithead.params import load_params

        weights = dict(load_params(params).get("weights") or {})
    for key in WEIGHT_FLAGS:
        if getattr(args, key, None):
            weights[key] = getattr(args, key)
    return weights


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dithead.device import default_device
    from dithead.fileio import write_json
    from dithead.metrics.evaluation import evaluate_videos

    report = evaluate_videos(args.pred, args.gt, weights_from(args.params, args), audio=args.audio,
                             side_by_side=args.side_by_side, metrics=args.metrics, fps=args.fps,
                             crop_size=args.crop_size, crop_margin=args.crop_margin, max_frames=args.max_frames,
                             boxes=args.boxes, device=args.device or default_device(), gt_start=args.gt_start,
                             gt_audio=args.gt_audio, lipsync_max_offset=args.lipsync_max_offset)
    print(format_report(report))
    if args.out:
        write_json(args.out, report)
        print(f"report -> {args.out}")
    return 0


def format_report(report: dict) -> str:
    frames = report["frames"]
    lines = [f"{report['pred']} vs {report['gt']}: {frames['compared']} frames at {frames['fps']:g} fps "
             f"({frames['overlap_seconds']:g} s overlap; generated {frames['generated']}, "
             f"ground truth {frames['ground_truth']}{_from_frame(frames)}); crops: {report['crop']['boxes']}"]
    if frames["ground_truth_without_face"] or frames["generated_without_face"]:
        lines.append(f"  frames without a face: ground truth {frames['ground_truth_without_face']}, "
                     f"generated {frames['generated_without_face']}")
    width = max(map(len, [*report["metrics"], *report["missing"]]), default=11)
    lines += [f"  {name:<{width}} {value:.4f}" for name, value in report["metrics"].items()]
    lines += [f"  {name:<{width}} {reason}" for name, reason in report["missing"].items()]
    lines += [f"  note: {note}" for note in report["notes"].values()]
    return "\n".join(lines)


def _from_frame(frames: dict) -> str:
    start = frames.get("ground_truth_start", 0)
    return f" from its frame {start}" if start else ""
