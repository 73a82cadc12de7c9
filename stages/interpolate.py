"""DVC stage `interpolate`: outputs/samples/**.mp4 (25 fps) -> outputs/interpolated/**.mp4 (50 fps).

RIFE when `weights.rife` is set (or `interpolate.method: rife`), else the
weight-free optical-flow interpolator; the report says which one ran. New
frames carry the provenance watermark like the sampled ones.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

from dithead.inference import watermark
from dithead.device import default_device
from dithead.inference.video_writer import EncodeError
from dithead.fileio import atomic_path, write_json
from dithead.inference.interpolation import WeightsError, interpolate_video, make_interpolator
from dithead.params import load_params
from dithead.data.video_reader import VideoError

SAMPLES = Path("outputs/samples")
OUTPUT = Path("outputs/interpolated")


def main() -> int:
    params = load_params()
    p, mark_params = params["interpolate"], params["sample"]["watermark"]
    mark = partial(watermark.embed, bits=watermark.message_bits(mark_params["message"]),
                   strength=mark_params["strength"])
    videos = sorted(SAMPLES.rglob("*.mp4"))
    if not videos:
        raise SystemExit(f"interpolate: no videos in {SAMPLES} (run the sample stage first)")
    try:
        # One interpolator for all videos: RIFE's weights are loaded once.
        interpolator = make_interpolator(p["method"], (params.get("weights") or {}).get("rife") or None,
                                         default_device())
    except (WeightsError, ValueError) as error:          # weights missing or wrong; unknown interpolate.method
        raise SystemExit(f"interpolate: {error}") from None
    reports = {}
    try:
        with atomic_path(OUTPUT) as out:
            out.mkdir(parents=True)
            for video in videos:
                rel = video.relative_to(SAMPLES)
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                report = interpolate_video(video, out / rel, crf=p["crf"], mark=mark, interpolator=interpolator)
                reports[str(rel)] = asdict(report)
            write_json(out / "report.json", reports)
    except (VideoError, EncodeError) as error:               # an unreadable sample, or its unreadable audio
        raise SystemExit(f"interpolate: {error}") from None
    methods = sorted({r["method"] for r in reports.values()})
    print(f"interpolate: {len(reports)} videos -> {OUTPUT} (method: {', '.join(methods)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
