"""Decoding the DiT's latents without snapping them to the codebook: held-out lip sync and mouth quality.

Run in a project folder after `dvc repro` (a time split), with the repository's `bench/` importable:

    PYTHONPATH=.:bench python docs/results/personal64_cnn_anchor_sampling_probes/unquantised_decoding.py \
        cnn_anchor unquantised 0 1 2

The sample stage decodes through the ground-truth VQGAN's quantiser (``decode_latents``);
with ``unquantised`` this script decodes the same latents with ``force_not_quantize``
(``quantised`` leaves the pipeline as it is). Everything else is the profile's
(DPM-Solver++ 10, guidance 4, fixed reference), one run per sampling seed given.
Writes ``unquantised_decoding_<clip>_<variant>.json`` in the working folder.
"""

import json
import sys
import tempfile
from pathlib import Path

import dithead.inference.pipeline as pipeline
import steps_quality as sq
from dithead.params import load_params


def decode_unquantised(vq, latents):
    return vq.decode(latents / vq.config.scaling_factor, force_not_quantize=True).sample.clamp(-1, 1)


def main() -> None:
    clip_name, variant, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    if variant == "unquantised":
        pipeline.decode_latents = decode_unquantised
    params = load_params()
    clip, frames, reference = sq.held_out_part(clip_name)
    config = sq.parse_config("dpmsolver++:10:4:fixed:per_frame", params["sample"])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in seeds:
            rows.append(sq.run_config(config, seed, params, clip, frames, reference, Path(work)))
            print(variant, seed, f"{rows[-1]['mouth_open_r']:.3f}", flush=True)
    print(sq.seed_summary(rows))
    Path(f"unquantised_decoding_{clip_name}_{variant}.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "series"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
