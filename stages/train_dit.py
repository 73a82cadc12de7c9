"""DVC stage `train_dit`: data/processed + data/features + models/vqgan_* -> models/dit/.

    accelerate launch stages/train_dit.py

Resumes from checkpoints/train_dit/ when an earlier run of the same
parameters, data and VQGANs was interrupted; logs to dvclive/train_dit/.
Ground-truth latents are cached in checkpoints/train_dit_latents/ and reused
while the data and the ground-truth VQGAN stay the same (delete it to free
the space: about 50 KB per frame at 256x256, f=4).
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffusers import VQModel

from dithead.training.train_dit import DiTTrainingConfig, train_dit
from dithead.data.mask import MaskSettings
from dithead.params import load_params, section_config
from dithead.data.store import list_clips
from dithead.training.run import TrainingInterrupted
from dithead.training.split import SplitSettings

STAGE = "train_dit"
PROCESSED = Path("data/processed")
FEATURES = Path("data/features")
VQGAN_MASKED = Path("models/vqgan_masked")
VQGAN_GT = Path("models/vqgan_gt")
OUTPUT = Path("models/dit")
CHECKPOINTS = Path("checkpoints") / STAGE
LATENT_CACHE = Path("checkpoints") / f"{STAGE}_latents"
LIVE = Path("dvclive") / STAGE


def training_config(params: dict) -> DiTTrainingConfig:
    return section_config(DiTTrainingConfig, params["dit"], "dit", seed=params["seed"],
                          mask=section_config(MaskSettings, params["mask"], "mask"),
                          split=section_config(SplitSettings, params["split"], "split"), fps=params["data"]["fps"])


def load_vqgan(path: Path) -> VQModel:
    if not (path / "config.json").is_file():
        raise SystemExit(f"{STAGE}: no trained VQGAN in {path} (run the train_vqgan stages first)")
    return VQModel.from_pretrained(path)


def main() -> int:
    params = load_params()
    try:
        config = training_config(params)
    except ValueError as error:
        raise SystemExit(f"{STAGE}: {error}") from None
    if not PROCESSED.is_dir() or not (clips := list_clips(PROCESSED)):
        raise SystemExit(f"{STAGE}: no preprocessed clips in {PROCESSED} (run the preprocess stage first)")
    try:
        metrics = train_dit(clips, config, features_dir=FEATURES, vq_masked=load_vqgan(VQGAN_MASKED),
                            vq_gt=load_vqgan(VQGAN_GT), output_dir=OUTPUT, checkpoint_dir=CHECKPOINTS,
                            live_dir=LIVE, latent_cache_dir=LATENT_CACHE)
    except TrainingInterrupted as stop:
        raise SystemExit(f"{STAGE}: {stop}") from None
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"{STAGE}: {error}") from None
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{STAGE}: saved {OUTPUT}" + (f" (held-out identities: {summary})" if summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
