"""DVC stages `train_vqgan_masked` / `train_vqgan_gt`: data/processed -> models/vqgan_<which>/.

    accelerate launch stages/train_vqgan.py --which masked|gt

Resumes from checkpoints/train_vqgan_<which>/ when an earlier run of the same
parameters was interrupted; logs to dvclive/train_vqgan_<which>/.
"""

from __future__ import annotations

import argparse
import sys

from dithead.data.mask import MaskSettings
from dithead.data.store import list_clips
from dithead.params import load_params, section_config
from dithead.stage import StageError, StagePaths, clear_errors
from dithead.training.run import TrainingInterrupted
from dithead.training.split import SplitSettings, make_split, training_clips
from dithead.training.train_vqgan import VQGANTrainingConfig, train_vqgan


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
    from dithead.metrics.weights import MissingWeightsError, WeightPaths, WeightsFormatError
    from dithead.models.lpips import LPIPS

    weights = section_config(WeightPaths, params.get("weights"), "weights")
    try:
        return LPIPS(weights.lpips_backbone, weights.lpips_linear)
    except (MissingWeightsError, WeightsFormatError) as error:
        raise StageError(f"vqgan.perceptual_weight is {config.perceptual_weight}, which needs LPIPS: "
                         f"{error} (or set vqgan.perceptual_weight: 0 to train without it)") from None


def main(argv: list[str] | None = None) -> int:
    which = parse_args(argv).which
    stage = f"train_vqgan_{which}"
    params = load_params()
    with clear_errors(stage, TrainingInterrupted, ValueError):
        paths = section_config(StagePaths, params.get("paths"), "paths")
        config = training_config(params, which)
        perceptual = load_perceptual(params, config)
        if not paths.processed.is_dir() or not (clips := list_clips(paths.processed)):
            raise StageError(f"no preprocessed clips in {paths.processed} (run the preprocess stage first)")
        # Held-out identities or frames are never trained on (paper 4.1: unseen identities).
        split = make_split(clips, section_config(SplitSettings, params["split"], "split"), params["seed"],
                           params["data"]["fps"])
        output = paths.models / f"vqgan_{which}"
        metrics = train_vqgan(training_clips(clips, split), config, output_dir=output,
                              checkpoint_dir=paths.checkpoints / stage, live_dir=paths.dvclive / stage,
                              perceptual=perceptual)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{stage}: saved {output}" + (f" (held-out {summary})" if summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
