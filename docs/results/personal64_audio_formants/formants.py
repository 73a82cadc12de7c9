"""Held-out r of bench/audio_predictability.py's ridge map with Praat's formant, pitch and intensity tracks.

Run in a project folder after `dvc repro extract_audio_features` with the personal profile, from the
repository root on PYTHONPATH, with the `praat-parselmouth` wheel installed (Praat's signal analysis,
no model weights; not a dependency of the project):

    python docs/results/personal64_audio_formants/formants.py cnn_anchor

Why: the first formant (F1) is the classic acoustic correlate of how far the jaw and lips are open,
and F2 of lip rounding. Log-mel bands carry the spectral envelope, but a formant's frequency is the
position of a peak in it, which a linear map of the bands cannot read off. Each track is sampled at
100 Hz (Burg's method with Praat's defaults: five formants below 5500 Hz), pooled to the video's frames
(mean over the frame), and missing values (no voicing, no formant found) set to the track's median
with a 0/1 column that says so.
"""

import sys
from pathlib import Path

import numpy as np
import parselmouth
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import audio_predictability as ap  # noqa: E402
from dithead.data.audio_features import pool_to_frames  # noqa: E402
from dithead.params import load_params  # noqa: E402

STEP = 0.01  # s: 100 track rows per second


def praat_tracks(samples: np.ndarray, rate: int) -> dict[str, np.ndarray]:
    """F1-F3 (Hz), their bandwidths, pitch (Hz) and intensity (dB), one row per STEP, NaN where undefined."""
    sound = parselmouth.Sound(samples.astype(np.float64), sampling_frequency=rate)
    times = np.arange(int(sound.duration / STEP)) * STEP + STEP / 2
    formant = sound.to_formant_burg(time_step=STEP)
    tracks = {f"F{i}": np.array([formant.get_value_at_time(i, t) for t in times]) for i in (1, 2, 3)}
    tracks.update({f"B{i}": np.array([formant.get_bandwidth_at_time(i, t) for t in times]) for i in (1, 2)})
    pitch = sound.to_pitch(time_step=STEP)
    tracks["pitch"] = np.array([pitch.get_value_at_time(t) for t in times])
    intensity = sound.to_intensity(time_step=STEP)
    tracks["intensity"] = np.array([intensity.get_value(t) for t in times])
    return tracks


def frame_features(tracks: dict[str, np.ndarray], names: list[str], n: int, fps: float) -> np.ndarray:
    columns = []
    for name in names:
        values = tracks[name].astype(np.float64)
        missing = ~np.isfinite(values)
        values[missing] = np.nanmedian(values)
        columns += [values, missing.astype(np.float64)]
    rows = np.stack(columns, axis=1).astype(np.float32)
    return pool_to_frames(rows, 1 / STEP, n, fps)


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    fps = params["data"]["fps"]
    clip, train, held_out = ap.clip_parts(name, params)
    opening = ap.face_openings(clip)
    n = len(opening)
    samples, rate = sf.read(clip.audio_path, dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(1)
    tracks = praat_tracks(samples, rate)
    mel = ap.clip_features(name)[:n]
    sets = {
        "log-mel 80 (the profile)": mel,
        "F1": frame_features(tracks, ["F1"], n, fps),
        "F1-F3, B1-B2, pitch, intensity": frame_features(tracks, list(tracks), n, fps),
    }
    sets["log-mel 80 + F1-F3, B1-B2, pitch, intensity"] = np.concatenate([mel, sets["F1-F3, B1-B2, pitch, intensity"]], 1)
    print(f"## {name}\n")
    ap.print_feature_sets(sets, opening, train, held_out, fps)


if __name__ == "__main__":
    main()
