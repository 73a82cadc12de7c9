"""Does a second speaker's footage help bench/audio_predictability.py's ridge map predict the first one's mouth?

Run from the repository root (on PYTHONPATH) with two project folders, each after `dvc repro
extract_audio_features` with the personal profile on one clip:

    python docs/results/personal64_audio_other_speaker/other_speaker.py RUN_A:cnn_anchor RUN_B:macron

For each speaker, the map (the DiT's 11-frame audio windows, every feature standardised on that speaker's
own training frames, the mouth opening standardised the same way so the two speakers share one scale) is
fit on its own training frames, on its own and the other speaker's, and on the other's alone, with the
ridge strength cross-validated over blocks of what it is fit on; each is scored on the speaker's held-out
frames. Prints one Markdown row per speaker and fit.
"""

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import audio_predictability as ap  # noqa: E402
from dithead.metrics.lipsync import sync_scores  # noqa: E402
from dithead.params import load_params  # noqa: E402


def speaker(folder: str, name: str) -> dict:
    """The speaker's audio windows, standardised opening, training rows with a face, and held-out frames."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        params = load_params()
        clip, train, held_out = ap.clip_parts(name, params)
        features = np.load(Path("data/features") / f"{name}.npy")
        x = ap.window_matrix(features, train, params["dit"]["audio_window"])
        opening = ap.face_openings(clip)
    finally:
        os.chdir(here)
    rows = np.arange(*train)
    rows = rows[np.isfinite(opening[rows])]
    y = (opening - opening[rows].mean()) / opening[rows].std()
    return {"name": name, "x": x, "y": y, "rows": rows, "held_out": slice(*held_out)}


def held_out_r(fit_on: list[dict], target: dict) -> tuple[float, float]:
    x = np.concatenate([s["x"][s["rows"]] for s in fit_on])
    y = np.concatenate([s["y"][s["rows"]] for s in fit_on])
    strength = ap.cross_validated_setting(x, y)
    predicted = ap.fit_ridge(x, y, strength)(target["x"][target["held_out"]])
    return sync_scores(predicted, target["y"][target["held_out"]])["mouth_open_r"], strength


def main() -> None:
    a, b = (speaker(*arg.split(":")) for arg in sys.argv[1:3])
    print("| speaker | fit on | held-out r | ridge |\n|---|---|---|---|")
    for target, other in ((a, b), (b, a)):
        for label, fit_on in (("own frames", [target]), ("own + other speaker's", [target, other]),
                              ("other speaker's only", [other])):
            r, strength = held_out_r(fit_on, target)
            print(f"| {target['name']} | {label} | {r:.3f} | {strength:.0e} |", flush=True)


if __name__ == "__main__":
    main()
