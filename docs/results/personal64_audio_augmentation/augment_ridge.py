"""Would augmenting the training audio help the audio-to-mouth map generalise? A ridge-map test, no DiT needed.

Run in a project folder after `dvc repro extract_audio_features` (a time split), with the repository's
`bench/` importable:

    PYTHONPATH=.:bench python docs/results/personal64_audio_augmentation/augment_ridge.py cnn_anchor

The map of `bench/audio_predictability.py` (ridge regression from each frame's 11-frame
window of log-mel features to its mouth opening, strength cross-validated over blocks of
the training part) is fit on the training frames plus three augmented copies of each
window, and scored on the held-out frames:

- ``time``: the window read at a random speed in [0.8, 1.2] around its centre frame
  (speed perturbation; features interpolated between frames);
- ``freq``: the mel axis warped by a random factor in [0.92, 1.08] (vocal-tract length
  perturbation);
- ``both``: the two together;
- ``shift``: the window's centre moved by -1, 0 or +1 frame, the frame's opening kept.

The ridge strengths tried grow with the number of copies (four times the rows, four times
the strength for the same shrinkage). Prints one line per augmentation.
"""

import sys
from pathlib import Path

import numpy as np

import audio_predictability as ap
from dithead.metrics.lipsync import pearson
from dithead.params import load_params

HALF = 5                      # the DiT's 11-frame window: 5 frames either side
COPIES = 3


def windows(raw, mean, std, centres, rate=None, freq=None) -> np.ndarray:
    """(len(centres), 11 * D) standardised windows; ``rate``: per-row speed; ``freq``: per-row mel-axis warp."""
    n, dims = raw.shape
    out = np.empty((len(centres), 2 * HALF + 1, dims))
    offsets = np.arange(-HALF, HALF + 1)
    for i, c in enumerate(centres):
        pos = np.clip(c + offsets * (1.0 if rate is None else rate[i]), 0, n - 1)
        lo = np.floor(pos).astype(int)
        hi, f = np.minimum(lo + 1, n - 1), (pos - lo)[:, None]
        w = raw[lo] * (1 - f) + raw[hi] * f
        if freq is not None:
            bins = np.clip(np.arange(dims) * freq[i], 0, dims - 1)
            low = np.floor(bins).astype(int)
            g = bins - low
            w = w[:, low] * (1 - g) + w[:, np.minimum(low + 1, dims - 1)] * g
        out[i] = w
    return ((out - mean) / std).reshape(len(centres), -1)


def augmented(raw, mean, std, opening, centres, kind, rng) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``centres`` plus ``COPIES`` augmented copies of each, and their mouth openings."""
    xs, ys = [windows(raw, mean, std, centres)], [opening[centres]]
    m = len(centres)
    for _ in range(COPIES if kind != "none" else 0):
        if kind == "time":
            xs.append(windows(raw, mean, std, centres, rate=rng.uniform(0.8, 1.2, m)))
        elif kind == "freq":
            xs.append(windows(raw, mean, std, centres, freq=rng.uniform(0.92, 1.08, m)))
        elif kind == "both":
            xs.append(windows(raw, mean, std, centres, rate=rng.uniform(0.8, 1.2, m), freq=rng.uniform(0.92, 1.08, m)))
        elif kind == "shift":
            xs.append(windows(raw, mean, std, np.clip(centres + rng.integers(-1, 2, m), 0, len(raw) - 1)))
        ys.append(opening[centres])
    return np.concatenate(xs), np.concatenate(ys)


def main() -> None:
    clip_name = sys.argv[1]
    params = load_params()
    clip, train, held = ap.clip_parts(clip_name, params)
    raw = np.load(Path("data/features") / f"{clip_name}.npy").astype(np.float64)
    opening = ap.face_openings(clip)
    part = raw[train[0]:train[1]]
    mean, std = part.mean(0), part.std(0) + 1e-6
    rows = np.arange(*train)
    rows = rows[np.isfinite(opening[rows])]
    held_rows = np.arange(*held)
    x_held = windows(raw, mean, std, held_rows)
    blocks = np.array_split(np.arange(len(rows)), ap.FOLDS)
    for kind in ("none", "time", "freq", "both", "shift"):
        copies = 0 if kind == "none" else COPIES

        def cross_validated_r(strength: float) -> float:
            scores = []
            for block in blocks:
                rest = np.setdiff1d(np.arange(len(rows)), block)
                xa, ya = augmented(raw, mean, std, opening, rows[rest], kind, np.random.default_rng(1))
                predict = ap.fit_ridge(xa, ya, strength)
                scores.append(pearson(predict(windows(raw, mean, std, rows[block])), opening[rows[block]]))
            return float(np.nanmean(scores))

        best = max((s * (1 + copies) for s in ap.RIDGE_STRENGTHS), key=cross_validated_r)
        xa, ya = augmented(raw, mean, std, opening, rows, kind, np.random.default_rng(0))
        r = pearson(ap.fit_ridge(xa, ya, best)(x_held), opening[held_rows])
        print(clip_name, kind, copies, f"strength {best:.0e}", "held-out r", round(r, 3), flush=True)


if __name__ == "__main__":
    main()
