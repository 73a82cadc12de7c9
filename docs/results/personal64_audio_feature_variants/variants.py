"""Held-out r of bench/audio_predictability.py's ridge map for audio features other than the profile's.

Run in a project folder after `dvc repro extract_audio_features` with the personal profile, from the
repository root on PYTHONPATH: python docs/results/personal64_audio_feature_variants/variants.py cnn_anchor

Log-mel with 40 / 80 / 128 bands, pooled to 25 Hz (the profile) or kept at 50 Hz (two rows per
video frame), and, when the `pocketsphinx` wheel is installed (it bundles an English acoustic model
and phone language model: no download), the share of each video frame that its phone recogniser
gives to each of its phones, alone and beside the mel features. Not a dependency of the project.
"""

import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import audio_predictability as ap  # noqa: E402
from dithead.data.audio_features import mel_rows, pool_to_frames  # noqa: E402
from dithead.metrics.lipsync import mouth_opening  # noqa: E402
from dithead.params import load_params  # noqa: E402

SPHINX_RATE = 100  # pocketsphinx frames per second


def phone_shares(samples: np.ndarray, n_frames: int, fps: float) -> np.ndarray | None:
    try:
        from pocketsphinx import Decoder, get_model_path
    except ImportError:
        return None
    model = get_model_path()
    decoder = Decoder(hmm=os.path.join(model, "en-us", "en-us"),
                      allphone=os.path.join(model, "en-us", "en-us-phone.lm.bin"),
                      lw=2.0, beam=1e-20, pbeam=1e-20, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    segments = [(s.word, s.start_frame, s.end_frame) for s in decoder.seg()]
    names = sorted({name for name, _, _ in segments})
    per_row = round(SPHINX_RATE / fps)
    rows = np.zeros((n_frames * per_row + SPHINX_RATE, len(names)), np.float32)
    for name, start, end in segments:
        rows[start:end + 1, names.index(name)] = 1
    return rows[:n_frames * per_row].reshape(n_frames, per_row, -1).mean(1)


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    fps = params["data"]["fps"]
    clip, train, held_out = ap.clip_parts(name, params)
    opening = mouth_opening(clip.landmarks)
    n = len(opening)
    samples, rate = sf.read(clip.audio_path, dtype="float32")
    variants = {}
    for bands in (40, 80, 128):
        rows = mel_rows(samples, rate, bands)
        variants[f"log-mel {bands}, 25 Hz"] = pool_to_frames(rows, 50, n, fps)
        pairs = np.zeros((n, 2 * bands), np.float32)
        m = min(len(rows) // 2, n)
        pairs[:m] = rows[:2 * m].reshape(m, 2 * bands)
        variants[f"log-mel {bands}, 50 Hz"] = pairs
    phones = phone_shares(samples, n, fps)
    if phones is not None:
        variants["phones"] = phones
        variants["log-mel 80 + phones"] = np.concatenate([variants["log-mel 80, 25 Hz"], phones], axis=1)
    ap.print_feature_sets(variants, opening, train, held_out, fps)


if __name__ == "__main__":
    main()
