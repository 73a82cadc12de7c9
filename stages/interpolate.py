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

from dithead import watermark
from dithead.features import default_device
from dithead.fileio import atomic_path, write_json
from dithead.interpolation import interpolate_video
from dithead.params import load_params

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
    reports = {}
    with atomic_path(OUTPUT) as out:
        out.mkdir(parents=True)
        for video in videos:
            rel = video.relative_to(SAMPLES)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            report = interpolate_video(video, out / rel, p["method"], (params.get("weights") or {}).get("rife") or None,
                                       device=default_device(), crf=p["crf"], mark=mark)
            reports[str(rel)] = asdict(report)
        write_json(out / "report.json", reports)
    methods = sorted({r["method"] for r in reports.values()})
    print(f"interpolate: {len(reports)} videos -> {OUTPUT} (method: {', '.join(methods)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
