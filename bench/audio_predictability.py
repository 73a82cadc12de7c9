"""How much of the mouth opening the audio features predict at all: a linear map fit on the training part.

Run in a project folder after `dvc repro extract_audio_features` with a time
split (no trained model is needed):

    python bench/audio_predictability.py --clip cnn_anchor
    python bench/audio_predictability.py --clip macron --windows 1 5 11 21 --fractions 0.25 0.5 1
    python bench/audio_predictability.py --clip cnn_anchor --model kernel --windows 11 --fractions 1

A ridge regression from each frame's audio window (the features and the window
the DiT sees: ``data/features/<clip>.npy``, ``dit.audio_window``) to the mouth
opening of that frame (the preprocessing landmarks, in the units of the
`evaluate` stage's ``mouth_open_r``) is fit on the clip's training frames and
scored on its held-out frames, which it never saw. The ridge strength is chosen
by cross-validation over contiguous blocks of the training part, never on the
held-out frames. ``--model kernel`` fits a non-linear map instead (kernel ridge
with a Gaussian kernel, its width chosen the same way): if it does no better
than the linear one, the limit is what the features carry, not the map's shape.

The held-out r is a yardstick for the DiT's ``mouth_open_r``: what a simple
model makes of the same audio and the same seconds of footage. A DiT far below
it is not using what the audio carries; a DiT near it is at the limit of the
features and the footage, and more DiT training or capacity will not raise it
much. ``--fractions`` fits on the first part of the training frames only: if r
still rises steeply at 1, more footage of the speaker is the lever. "r on seen
frames" scores the map on the last stretch of the frames it was fit on (those
`bench/steps_quality.py --part train` samples): its gap to the held-out r is
how far the map fits what it saw better than what it did not. Prints a
Markdown table and writes it with the raw figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dithead.data.audio_features import audio_windows
from dithead.data.store import ProcessedClip
from dithead.metrics.lipsync import mouth_opening, pearson, sync_scores
from dithead.params import load_params
from dithead.training.split import make_split
from steps_quality import training_stretch  # noqa: E402  (bench/steps_quality.py)

RIDGE_STRENGTHS = (1e1, 1e2, 1e3, 1e4, 1e5)
# (width, ridge strength) of the Gaussian kernel exp(-width * |a - b|^2 / dims): with standardised features,
# width 1 makes two typical windows' kernel about exp(-2), so the grid spans broad to narrow kernels
KERNEL_SETTINGS = tuple((width, strength) for width in (0.1, 0.3, 1.0, 3.0) for strength in (0.1, 1.0, 10.0))
FOLDS = 5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True, help="a clip of data/processed (features in data/features)")
    p.add_argument("--windows", type=int, nargs="+",
                   help="audio windows in frames (default: 1, 5, dit.audio_window, 21)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="shares of the training part to fit on (its first frames), at the DiT's window")
    p.add_argument("--model", choices=sorted(MODELS), default="linear",
                   help="linear: ridge regression; kernel: kernel ridge with a Gaussian kernel (non-linear)")
    p.add_argument("--out", default="metrics/audio_predictability.json")
    return p.parse_args()


def clip_parts(name: str, params: dict) -> tuple[ProcessedClip, tuple[int, int], tuple[int, int]]:
    """Clip ``name`` with its training and held-out frames under the project's time split."""
    if params["split"].get("mode") != "time":
        raise SystemExit("split.mode must be time: a held-out end of the clip is what the regression is scored on")
    clip = ProcessedClip(Path("data/processed") / name)
    split = make_split([clip], params["split"], params["seed"], params["data"]["fps"])
    return clip, tuple(split.train_frames[name]), tuple(split.validation_frames[name])


def clip_features(name: str) -> np.ndarray:
    """The clip's per-frame audio features (the extract_audio_features stage's output)."""
    path = Path("data/features") / f"{name}.npy"
    if not path.exists():
        raise SystemExit(f"{path}: no audio features for clip '{name}' (run dvc repro extract_audio_features)")
    return np.load(path)


def face_openings(clip: ProcessedClip) -> np.ndarray:
    """The clip's per-frame mouth opening (the evaluate stage's units), NaN where no face was found."""
    opening = mouth_opening(clip.landmarks)
    opening[~np.asarray(clip.valid, bool)] = np.nan
    return opening


def window_matrix(features: np.ndarray, train: tuple[int, int], window: int) -> np.ndarray:
    """(N, window * D): every frame's audio window, each feature standardised on the training frames."""
    part = features[train[0]:train[1]]
    scaled = (features - part.mean(0)) / (part.std(0) + 1e-6)
    return audio_windows(scaled, np.arange(len(features)), window).reshape(len(features), -1)


def fit_ridge(x: np.ndarray, y: np.ndarray, strength: float):
    """Ridge regression with an unpenalised intercept; returns the predictor."""
    x_mean, y_mean = x.mean(0), y.mean()
    centred = x - x_mean
    weights = np.linalg.solve(centred.T @ centred + strength * np.eye(x.shape[1]), centred.T @ (y - y_mean))
    return lambda rows: (rows - x_mean) @ weights + y_mean


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, without an (a, b, dims) intermediate."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


def fit_kernel_ridge(x: np.ndarray, y: np.ndarray, setting: tuple[float, float]):
    """Kernel ridge regression with a Gaussian kernel; ``setting`` = (width, strength). Returns the predictor."""
    width, strength = setting
    gamma, y_mean = width / x.shape[1], y.mean()
    alpha = np.linalg.solve(np.exp(-gamma * squared_distances(x, x)) + strength * np.eye(len(x)), y - y_mean)
    return lambda rows: np.exp(-gamma * squared_distances(rows, x)) @ alpha + y_mean


MODELS = {"linear": (fit_ridge, RIDGE_STRENGTHS), "kernel": (fit_kernel_ridge, KERNEL_SETTINGS)}


def cross_validated_setting(x: np.ndarray, y: np.ndarray, model: str = "linear"):
    """The ``model`` setting with the best mean r over ``FOLDS`` contiguous blocks, each predicted from the rest."""
    fit, settings = MODELS[model]
    blocks = np.array_split(np.arange(len(x)), FOLDS)

    def mean_r(setting) -> float:
        scores = []
        for block in blocks:
            rest = np.setdiff1d(np.arange(len(x)), block)
            scores.append(pearson(fit(x[rest], y[rest], setting)(x[block]), y[block]))
        return float(np.nanmean(scores))

    return max(settings, key=mean_r)


def held_out_score(x: np.ndarray, opening: np.ndarray, fit_frames: tuple[int, int],
                   held_out: tuple[int, int], fps: float, model: str = "linear") -> dict:
    """Fit ``model`` on ``fit_frames`` (frames with a face), score on ``held_out`` with the evaluate stage's scores.

    ``seen_r`` scores the fit's last stretch of frames instead, as long as the held-out part
    (``bench/steps_quality.py --part train`` samples the same frames): how well it fits what it saw.
    """
    rows = np.arange(*fit_frames)
    rows = rows[np.isfinite(opening[rows])]
    setting = cross_validated_setting(x[rows], opening[rows], model)
    predict = MODELS[model][0](x[rows], opening[rows], setting)
    scores = sync_scores(predict(x[held_out[0]:held_out[1]]), opening[held_out[0]:held_out[1]])
    (first, stop), _ = training_stretch(held_out, fit_frames)
    return {"mouth_open_r": scores["mouth_open_r"], "av_offset": scores["av_offset"],
            "mouth_open_std_ratio": scores["mouth_open_std_ratio"],
            "seen_r": pearson(predict(x[first:stop]), opening[first:stop]), "model": model,
            **({"ridge_strength": setting} if model == "linear" else
               {"kernel_width": setting[0], "ridge_strength": setting[1]}),
            "fit_seconds": round(len(rows) / fps, 1)}


def print_feature_sets(sets: dict[str, np.ndarray], opening: np.ndarray, train: tuple[int, int],
                       held_out: tuple[int, int], fps: float, windows: tuple[int, ...] = (5, 11)) -> None:
    """Print a Markdown table of the linear map's held-out r for each feature set at each window."""
    print("| features | " + " | ".join(f"window {w}" for w in windows) + " |\n|---|" + "---|" * len(windows))
    for label, features in sets.items():
        r = [held_out_score(window_matrix(features, train, w), opening, train, held_out, fps)["mouth_open_r"]
             for w in windows]
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in r) + " |", flush=True)


def table(rows: list[dict]) -> str:
    lines = ["| map | window (frames) | training share | fit on (s) | held-out r | av_offset | std ratio "
             "| r on seen frames | ridge |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        width = f", width {r['kernel_width']:g}" if "kernel_width" in r else ""
        lines.append(f"| {r['model']} | {r['window']} | {r['fraction']:.2f} | {r['fit_seconds']} "
                     f"| {r['mouth_open_r']:.3f} | {r['av_offset']:+.0f} | {r['mouth_open_std_ratio']:.2f} "
                     f"| {r['seen_r']:.3f} | {r['ridge_strength']:.0e}{width} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    params = load_params()
    clip, train, held_out = clip_parts(args.clip, params)
    features = clip_features(args.clip)
    opening = face_openings(clip)
    dit_window = params["dit"]["audio_window"]
    windows = args.windows or sorted({1, 5, dit_window, 21})
    plan = [(w, 1.0) for w in windows] + [(dit_window, f) for f in args.fractions if f != 1.0]
    rows = []
    for window, fraction in plan:
        x = window_matrix(features, train, window)
        fit_frames = (train[0], train[0] + int(round((train[1] - train[0]) * fraction)))
        score = held_out_score(x, opening, fit_frames, held_out, params["data"]["fps"], args.model)
        rows.append({"window": window, "fraction": fraction, **score})
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"clip": args.clip, "train_frames": list(train),
                                          "held_out_frames": list(held_out), "rows": rows, "table": text},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
