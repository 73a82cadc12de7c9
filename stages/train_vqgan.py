"""DVC stages `train_vqgan_masked` / `train_vqgan_gt`: data/processed -> models/vqgan_<which>/.

    accelerate launch stages/train_vqgan.py --which masked|gt

Resumes from checkpoints/train_vqgan_<which>/ when an earlier run of the same
parameters was interrupted; logs to dvclive/train_vqgan_<which>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dithead.data.mask import MaskSettings
from dithead.params import load_params, section_config
from dithead.training.split import SplitSettings, make_split, training_clips
from dithead.data.store import list_clips
from dithead.training.run import TrainingInterrupted
from dithead.training.train_vqgan import VQGANTrainingConfig, train_vqgan

PROCESSED = Path("data/processed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("masked", "gt"), required=True,
                        help="masked: autoencoder of frames with the lower face masked; gt: of ground-truth frames")
    return parser.parse_args(argv)


def training_config(params: dict, which: str) -> VQGANTrainingConfig:
    return section_config(VQGANTrainingConfig, params["vqgan"], "vqgan", masked=which == "masked",
                          seed=params["seed"], mask=section_config(MaskSettings, params["mask"], "mask"))


def load_perceptual(params: dict, config: VQGANTrainingConfig):
    """The LPIPS network when the loss uses it; a missing weight file stops the stage before training."""
    if config.perceptual_weight <= 0:
        return None
    from dithead.models.lpips import LPIPS
    from dithead.metrics.weights import MissingWeightsError, WeightsFormatError

    weights = params.get("weights") or {}
    try:
        return LPIPS(weights.get("lpips_backbone", ""), weights.get("lpips_linear", ""))
    except (MissingWeightsError, WeightsFormatError) as error:
        raise SystemExit(f"train_vqgan: vqgan.perceptual_weight is {config.perceptual_weight}, which needs LPIPS: "
                         f"{error} (or set vqgan.perceptual_weight: 0 to train without it)") from None


def main(argv: list[str] | None = None) -> int:
    which = parse_args(argv).which
    stage = f"train_vqgan_{which}"
    params = load_params()
    try:
        config = training_config(params, which)
    except ValueError as error:
        raise SystemExit(f"{stage}: {error}") from None
    perceptual = load_perceptual(params, config)
    if not PROCESSED.is_dir() or not (clips := list_clips(PROCESSED)):
        raise SystemExit(f"{stage}: no preprocessed clips in {PROCESSED} (run the preprocess stage first)")
    try:
        # Held-out identities or frames are never trained on (paper 4.1: unseen identities).
        split = make_split(clips, section_config(SplitSettings, params["split"], "split"), params["seed"],
                           params["data"]["fps"])
        clips = training_clips(clips, split)
        metrics = train_vqgan(clips, config, output_dir=Path("models") / f"vqgan_{which}",
                              checkpoint_dir=Path("checkpoints") / stage, live_dir=Path("dvclive") / stage,
                              perceptual=perceptual)
    except TrainingInterrupted as stop:
        raise SystemExit(f"{stage}: {stop}") from None
    except ValueError as error:
        raise SystemExit(f"{stage}: {error}") from None
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{stage}: saved models/vqgan_{which}" + (f" (held-out {summary})" if summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
