"""README figures of a finished run with a time split: held-out frames and mouth-opening curves.

Run in the project folder after `dvc repro`:

    python bench/lipsync_figures.py --clip cnn_anchor --out docs/images

Writes ``<out>/heldout_frames_<clip>.png`` (rows: ground truth, generated, the
reference-copy baseline; face crops of evenly spaced held-out frames) and
``<out>/mouth_opening_<clip>.png`` (mouth opening over the held-out frames:
ground truth, generated with the true audio, generated with mismatched audio),
from outputs/samples/ and the evaluate stage's per-frame series in
dvclive/evaluate/plots/custom/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from dithead.data.store import ProcessedClip
from dithead.data.video_reader import iter_frames

SAMPLES = Path("outputs/samples")
CURVES = Path("dvclive/evaluate/plots/custom")
ROWS = (("ground truth", None), ("generated", ""), ("reference copy", "__reference_copy"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True)
    p.add_argument("--out", default="docs/images")
    p.add_argument("--count", type=int, default=6, help="frames shown")
    p.add_argument("--size", type=int, default=128, help="crop side in the picture")
    return p.parse_args()


def frames_of(path: Path, wanted: set[int], start: int = 0) -> dict[int, np.ndarray]:
    """Frames ``start + k`` of ``path`` at 25 fps, keyed by k."""
    out = {}
    for frame in iter_frames(path, 25):
        k = frame.index - start
        if k in wanted:
            out[k] = frame.image
        if k >= max(wanted):
            break
    return out


def crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    x0, y0, x1, y1 = np.asarray(box).round().astype(int)
    return cv2.resize(image[max(y0, 0):y1, max(x0, 0):x1], (size, size), interpolation=cv2.INTER_AREA)


def frames_picture(clip: ProcessedClip, start: int, n: int, count: int, size: int) -> np.ndarray:
    picks = sorted({int(k) for k in np.linspace(0, n - 1, count).round()})
    rows = []
    for label, suffix in ROWS:
        source = Path(clip.meta["source"]["video"]) if suffix is None else SAMPLES / f"{clip.name}{suffix}.mp4"
        images = frames_of(source, set(picks), start if suffix is None else 0)
        row = np.concatenate([crop(images[k], clip.boxes[start + k], size) for k in picks], axis=1)
        cv2.putText(row, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)


def curves_picture(clip: str, path: Path, fps: float = 25.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3))
    for name, label, style in ((clip, "generated (true audio)", "-"), (f"{clip}__mismatched_audio", "generated (mismatched audio)", ":")):
        series = CURVES / f"mouth_open_{name}.json"
        if not series.is_file():
            continue
        points = json.loads(series.read_text())
        rows = points[next(iter(points))] if isinstance(points, dict) else points
        t = np.array([p["frame"] for p in rows]) / fps
        if name == clip:
            ax.plot(t, [p["mouth_open_gt"] for p in rows], color="black", lw=1.2, label="ground truth")
        ax.plot(t, [p["mouth_open"] for p in rows], style, lw=1.2, label=label)
    ax.set_xlabel("seconds into the held-out part")
    ax.set_ylabel("inner-lip gap / eye distance")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    report = json.loads((SAMPLES / "report.json").read_text())[f"{args.clip}.mp4"]
    clip = ProcessedClip(Path("data/processed") / args.clip)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    picture = frames_picture(clip, report["start_frame"], report["frames"], args.count, args.size)
    cv2.imwrite(str(out / f"heldout_frames_{args.clip}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    curves_picture(args.clip, out / f"mouth_opening_{args.clip}.png")
    print(f"wrote {out / f'heldout_frames_{args.clip}.png'} and {out / f'mouth_opening_{args.clip}.png'}")


if __name__ == "__main__":
    main()
