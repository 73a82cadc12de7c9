"""Does the reference frame's mouth matter? Held-out lip sync with the reference forced to chosen training frames.

Run in a project folder after `dvc repro` (a time split), with the repository's `bench/` importable:

    PYTHONPATH=.:bench python docs/results/personal64_cnn_anchor_sampling_probes/reference_mouth.py cnn_anchor 0

The training frames with a face are ranked by their mouth opening (the preprocessing
landmarks, in the units of ``mouth_open_r``); the frames at the 5th, 10th and 15th
percentiles ("closed"), the 45th, 50th and 55th ("median") and the 85th, 90th and 95th
("open") each serve as the one clean reference of every held-out frame (the profile's
``sample.reference: fixed``), with the profile's solver and guidance and the sampling seed
given. Writes ``reference_mouth_<clip>_seed<seed>.json`` in the working folder.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import steps_quality as sq
from audio_predictability import face_openings
from dithead.params import load_params

PERCENTILES = {"closed": (0.05, 0.10, 0.15), "median": (0.45, 0.50, 0.55), "open": (0.85, 0.90, 0.95)}


def ranked_training_frames(clip, train: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Training frames with a face, from the most closed mouth to the most open, and every frame's opening."""
    opening = face_openings(clip)
    frames = np.arange(*train)
    frames = frames[np.isfinite(opening[frames])]
    return frames[np.argsort(opening[frames])], opening


def main() -> None:
    clip_name, seed = sys.argv[1], int(sys.argv[2])
    params = load_params()
    clip, frames, train = sq.held_out_part(clip_name)
    order, opening = ranked_training_frames(clip, train)
    config = sq.parse_config("dpmsolver++:10:4:fixed:per_frame", params["sample"])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for kind, quantiles in PERCENTILES.items():
            for q in quantiles:
                ref = int(order[int(q * len(order))])
                row = sq.run_config(config, seed, params, clip, frames, (ref, ref + 1), Path(work))
                row.pop("series")
                rows.append({**row, "kind": kind, "ref_opening": float(opening[ref])})
                print(kind, ref, f"{opening[ref]:.4f}", f"{row['mouth_open_r']:.3f}", flush=True)
    Path(f"reference_mouth_{clip_name}_seed{seed}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
