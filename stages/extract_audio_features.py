"""DVC stage `extract_audio_features`: data/processed/<clip>/audio.wav -> data/features/<clip>.npy."""

from __future__ import annotations

import sys

import numpy as np
import soundfile as sf
from tqdm import tqdm

from dithead.data.audio_features import AudioFeatureSettings, FeatureModelError, load_encoder, settings_features
from dithead.data.store import list_clips
from dithead.device import default_device
from dithead.fileio import atomic_path, write_json
from dithead.params import load_params, section_config
from dithead.stage import StagePaths, clear_errors

STAGE = "extract_audio_features"


def main() -> int:
    params = load_params()
    fps = params["data"]["fps"]
    device = default_device()
    with clear_errors(STAGE, FeatureModelError, ValueError):    # the encoder's weights; a bad parameter
        paths = section_config(StagePaths, params.get("paths"), "paths")
        p = section_config(AudioFeatureSettings, params["audio_features"], "audio_features")
        net = load_encoder(p, device)
    dim = None
    with atomic_path(paths.features) as tmp:
        tmp.mkdir(parents=True)
        for clip in tqdm(list_clips(paths.processed), desc="audio features", unit="clip"):
            samples, rate = sf.read(clip.audio_path, dtype="float32")
            feats = settings_features(samples, rate, len(clip), fps, p, net=net, device=device)
            np.save(tmp / f"{clip.name}.npy", feats)
            dim = feats.shape[1]
        write_json(tmp / "features.json", {"encoder": p.encoder, "model": p.model if net is not None else None,
                                           "output": p.output, "dim": dim, "fps": fps})
    print(f"extract_audio_features: {p.encoder} features, {dim} per frame -> {paths.features}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
