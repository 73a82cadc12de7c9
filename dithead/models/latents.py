"""Between pixels and the DiT's latents: image tensors, VQGAN encode/decode, model fingerprints.

Shared by training and inference (neither imports the other for these):
images as float tensors in [-1, 1] and back to uint8, the latents the DiT
works on (the VQGAN encoder's output times its ``scaling_factor``), and a
fingerprint of a model's weights for caches that must go stale with them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """Float (3, H, W) or (B, 3, H, W) in [-1, 1] -> RGB uint8 (H, W, 3) or (B, H, W, 3)."""
    scaled = (tensor.detach().float().clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def images_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1], the VQGANs' input range."""
    return images.float().div(127.5).sub(1.0)


@torch.no_grad()
def encode_latents(vq, images: torch.Tensor) -> torch.Tensor:
    """Latents the DiT works on: the VQGAN encoder's output times its ``scaling_factor``.

    Not quantised: the DiT learns the continuous encoder output, as LDM trains
    on VQ models, and the ground-truth decoder quantises what the DiT generates
    (``VQModel.decode`` does by default), snapping small errors onto the codebook.
    ``images``: uint8 or [-1, 1] float (B, 3, H, W).
    """
    if images.dtype == torch.uint8:
        images = images_to_unit(images)
    return vq.encode(images).latents * vq.config.scaling_factor


@torch.no_grad()
def decode_latents(vq, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of ``encode_latents`` through the (quantising) decoder: images in [-1, 1]."""
    return vq.decode(latents / vq.config.scaling_factor).sample.clamp(-1, 1)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's config and weights: a cache made with other weights is stale."""
    digest = hashlib.sha256(json.dumps(dict(getattr(model, "config", {})), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
