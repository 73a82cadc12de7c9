"""The VQGAN autoencoder of paper 3.2 (LDM's first stage) and its PatchGAN discriminator.

``build_vqmodel`` makes the diffusers ``VQModel`` both VQGANs (masked frames,
ground-truth frames) use; ``VQAutoencoder`` is one encode-quantise-decode
pass for training; ``NLayerDiscriminator`` is taming-transformers' PatchGAN.
Their training lives in ``dithead.training.train_vqgan``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import VQModel
from torch import nn



def build_vqmodel(*, image_size: int, channels: Sequence[int], layers_per_block: int, latent_channels: int,
                  codebook_size: int, norm_groups: int) -> VQModel:
    """A diffusers ``VQModel`` with downsampling factor ``f = 2 ** (len(channels) - 1)``.

    ``channels=[128, 256, 512], layers_per_block=2, latent_channels=3,
    codebook_size=8192`` is LDM's vq-f4.
    """
    channels = [int(c) for c in channels]
    if not channels:
        raise ValueError("vqgan channels must list at least one width")
    if layers_per_block < 1:
        raise ValueError(f"vqgan layers_per_block must be >= 1, not {layers_per_block}")
    if any(c % norm_groups for c in channels):
        raise ValueError(f"every vqgan channel width {channels} must be divisible by norm_groups={norm_groups}")
    factor = 2 ** (len(channels) - 1)
    if image_size % factor:
        raise ValueError(f"image size {image_size} is not divisible by the downsampling factor {factor}")
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        sample_size=image_size,
        num_vq_embeddings=codebook_size,
        norm_num_groups=norm_groups,
        # LDM's VQ latents go into diffusion unscaled; train_vqgan replaces
        # this with 1/std of the trained model's latents.
        scaling_factor=1.0,
    )


def downsample_factor(model: VQModel) -> int:
    """Image side / latent side of ``model`` (its ``f``)."""
    return 2 ** (len(model.config.block_out_channels) - 1)


class VQAutoencoder(nn.Module):
    """One training pass of a ``VQModel``: encode, quantise, decode.

    ``forward`` returns (reconstruction, codebook loss, code indices), so that
    a distributed wrapper sees the whole pass as one forward call and the
    codes are at hand for codebook statistics.
    """

    def __init__(self, vq: VQModel):
        super().__init__()
        self.vq = vq

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = self.vq.encode(images).latents
        quantized, codebook_loss, (_, _, codes) = self.vq.quantize(latents)
        reconstruction = self.vq.decode(quantized, force_not_quantize=True).sample
        return reconstruction, codebook_loss, codes.reshape(-1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's output convolution, where the adaptive GAN weight is measured."""
        return self.vq.decoder.conv_out.weight


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator of pix2pix, as used by taming-transformers.

    ``layers`` stride-2 convolutions (widths ``channels * 2**i``, capped at 8x),
    then a stride-1 convolution and a 1-channel output: one logit per
    overlapping patch.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        widths = [channels * min(2 ** i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(widths[i]), nn.LeakyReLU(0.2, True)]
        blocks.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*blocks)
        self.apply(_init_discriminator_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def _init_discriminator_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
