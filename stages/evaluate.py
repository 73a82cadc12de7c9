"""DVC stage `evaluate`: outputs/samples/<clip>.mp4 vs data/raw/<clip>.* -> metrics/eval.json, plots, comparison video.

Writes
- metrics/eval.json: overall (generated videos), per-baseline and per-video numbers only:
  PSNR, SSIM, LPIPS, FID, LSE-C, LSE-D, LMD, mouth PSNR/SSIM, lip sync;
- dvclive/evaluate/plots/custom/: per-frame PSNR and LMD of every clip, and its
  mouth opening beside the ground truth's (mouth_open_<clip>);
- outputs/eval/report.json: the full per-clip reports (frame counts, overlap,
  frames without a face, crop, audio, notes), and why any metric or clip is missing;
- outputs/eval/<clip>_side_by_side.mp4: ground truth | generated | |difference|
  for the first clip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dithead.device import default_device
from dithead.fileio import atomic_path, write_json
from dithead.metrics.evaluation import EvalConfig, EvaluationError, evaluate_samples
from dithead.metrics.weights import WeightPaths
from dithead.params import load_params, section_config
from dithead.stage import StageError, StagePaths, clear_errors

STAGE = "evaluate"
PLOTTED = ("psnr", "lmd")


def config(params: dict) -> EvalConfig:
    return section_config(EvalConfig, params["evaluate"], "evaluate", fps=params["data"]["fps"],
                          device=default_device())


def main() -> int:
    params = load_params()
    with clear_errors(STAGE, ValueError):              # an unknown evaluate key, metric or box mode
        paths = section_config(StagePaths, params.get("paths"), "paths")
        settings = config(params)
    metrics_path = paths.metrics / "eval.json"
    first = min((p.stem for p in paths.samples.glob("*.mp4")), default=None)
    with clear_errors(STAGE, EvaluationError):         # e.g. no generated videos
        with atomic_path(paths.evaluation) as out:
            out.mkdir(parents=True)
            side_by_side = (first, out / f"{first}_side_by_side.mp4") if first else None
            evaluation = evaluate_samples(paths.samples, params["data"]["raw_dir"],
                                          section_config(WeightPaths, params.get("weights"), "weights"),
                                          settings, side_by_side)
            summary = evaluation.metrics_json()
            # Explanations go to the report and the log; the metrics file stays numeric (`dvc metrics show`).
            write_json(out / "report.json", {"clips": {name: r.report for name, r in evaluation.results.items()},
                                             "missing": summary["missing"], "failed": summary["failed"]})
        write_json(metrics_path, {key: summary[key] for key in ("overall", "baselines", "clips")})
        write_plots(evaluation.results, paths.dvclive / STAGE)
        for name, reason in summary["failed"].items():
            print(f"evaluate: {name} not evaluated: {reason}", file=sys.stderr)
        for metric, reason in summary["missing"].items():
            print(f"evaluate: {metric} {reason}", file=sys.stderr)
        if not evaluation.results:
            raise StageError(f"no clip could be evaluated (see {paths.evaluation / 'report.json'})")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in summary["overall"].items())
    print(f"evaluate: {shown} -> {metrics_path}")
    return 0


def write_plots(results: dict, live_dir: Path) -> None:
    """Per-frame PSNR, LMD and mouth opening of each clip as dvclive custom plots (``dvc plots show``)."""
    from dvclive import Live

    # dvc.yaml declares the plots; dvclive writes no dvc.yaml and saves no experiment.
    live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    for clip, result in results.items():
        for metric in PLOTTED:
            values = result.per_frame.get(metric)
            if values is None:
                continue
            points = [{"frame": int(k), metric: float(v)} for k, v in enumerate(values) if np.isfinite(v)]
            if points:
                live.log_plot(f"{metric}_{clip}", points, x="frame", y=metric, template="linear",
                              title=f"{clip}: per-frame {metric.upper()}")
        log_mouth_plot(live, clip, result.per_frame)


def log_mouth_plot(live, clip: str, per_frame: dict) -> None:
    """Generated and ground-truth mouth opening in one plot: a lag, a frozen or a shy mouth shows at a glance."""
    series = [per_frame.get(name) for name in ("mouth_open", "mouth_open_gt")]
    if any(values is None for values in series):
        return
    points = [{"frame": k, "mouth_open": float(g), "mouth_open_gt": float(t)}
              for k, (g, t) in enumerate(zip(*series)) if np.isfinite(g) and np.isfinite(t)]
    if points:
        live.log_plot(f"mouth_open_{clip}", points, x="frame", y=["mouth_open", "mouth_open_gt"],
                      template="linear", title=f"{clip}: mouth opening, generated and ground truth",
                      y_label="inner-lip gap / eye distance")


if __name__ == "__main__":
    sys.exit(main())
