"""DVC stage `interpolate`: outputs/samples/**.mp4 (25 fps) -> outputs/interpolated/**.mp4 (50 fps).

The videos people watch: the generated and dubbed ones. The baselines beside
them (reference copy, mismatched audio, silence: `variant` in the sample
report) are made to be scored at 25 fps and are not interpolated.

RIFE when `weights.rife` is set (or `interpolate.method: rife`), else the
weight-free optical-flow interpolator; the report says which one ran. New
frames carry the provenance watermark like the sampled ones.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from dithead.data.video_reader import VideoError
from dithead.device import default_device
from dithead.fileio import atomic_path, write_json
from dithead.inference import watermark
from dithead.inference.interpolation import InterpolateSettings, WeightsError, interpolate_video, make_interpolator
from dithead.inference.video_writer import EncodeError
from dithead.metrics.weights import WeightPaths
from dithead.params import load_params, section_config
from dithead.stage import StageError, StagePaths, clear_errors

STAGE = "interpolate"
WATCHED = ("generated", "dubbed")     # sample report variants worth a 50 fps version


def watched_videos(samples: Path) -> list[Path]:
    """The sampled videos of a WATCHED variant (all of them when the sample stage wrote no report)."""
    report = samples / "report.json"
    variants = {rel: r.get("variant") for rel, r in json.loads(report.read_text()).items()} if report.is_file() else {}
    return [v for v in sorted(samples.rglob("*.mp4")) if variants.get(str(v.relative_to(samples)), WATCHED[0]) in WATCHED]


def main() -> int:
    params = load_params()
    mark_params = params["sample"]["watermark"]
    # Every in-between frame gets the mark the sampled frames carry (theirs is kept through the re-encode).
    mark = watermark.marker(mark_params["message"], mark_params["strength"])
    # weights missing or wrong, an unknown interpolate.method; an unreadable sample, or its unreadable audio
    with clear_errors(STAGE, WeightsError, ValueError, VideoError, EncodeError):
        paths = section_config(StagePaths, params.get("paths"), "paths")
        settings = section_config(InterpolateSettings, params["interpolate"], "interpolate")
        weights = section_config(WeightPaths, params.get("weights"), "weights")
        videos = watched_videos(paths.samples)
        if not videos:
            raise StageError(f"no videos in {paths.samples} (run the sample stage first)")
        # One interpolator for all videos: RIFE's weights are loaded once.
        interpolator = make_interpolator(settings.method, weights.rife or None, default_device())
        reports = {}
        with atomic_path(paths.interpolated) as out:
            out.mkdir(parents=True)
            for video in videos:
                rel = video.relative_to(paths.samples)
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                report = interpolate_video(video, out / rel, crf=settings.crf, preset=settings.preset, mark=mark,
                                           interpolator=interpolator)
                reports[str(rel)] = asdict(report)
            write_json(out / "report.json", reports)
    methods = sorted({r["method"] for r in reports.values()})
    print(f"interpolate: {len(reports)} videos -> {paths.interpolated} (method: {', '.join(methods)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
