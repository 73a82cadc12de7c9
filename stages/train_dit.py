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

from dithead.data.mask import MaskSettings
from dithead.data.store import list_clips
from dithead.params import load_params, section_config
from dithead.stage import StageError, StagePaths, clear_errors
from dithead.training.run import TrainingInterrupted
from dithead.training.split import SplitSettings
from dithead.training.train_dit import DiTTrainingConfig, train_dit

STAGE = "train_dit"


def training_config(params: dict) -> DiTTrainingConfig:
    return section_config(DiTTrainingConfig, params["dit"], "dit", seed=params["seed"],
                          mask=section_config(MaskSettings, params["mask"], "mask"),
                          split=section_config(SplitSettings, params["split"], "split"), fps=params["data"]["fps"])


def load_vqgan(path: Path) -> VQModel:
    if not (path / "config.json").is_file():
        raise StageError(f"no trained VQGAN in {path} (run the train_vqgan stages first)")
    return VQModel.from_pretrained(path)


def main() -> int:
    params = load_params()
    with clear_errors(STAGE, TrainingInterrupted, ValueError, FileNotFoundError):
        paths = section_config(StagePaths, params.get("paths"), "paths")
        config = training_config(params)
        if not paths.processed.is_dir() or not (clips := list_clips(paths.processed)):
            raise StageError(f"no preprocessed clips in {paths.processed} (run the preprocess stage first)")
        output = paths.models / "dit"
        metrics = train_dit(clips, config, features_dir=paths.features,
                            vq_masked=load_vqgan(paths.models / "vqgan_masked"),
                            vq_gt=load_vqgan(paths.models / "vqgan_gt"), output_dir=output,
                            checkpoint_dir=paths.checkpoints / STAGE, live_dir=paths.dvclive / STAGE,
                            latent_cache_dir=paths.checkpoints / f"{STAGE}_latents")
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{STAGE}: saved {output}" + (f" (held-out identities: {summary})" if summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
