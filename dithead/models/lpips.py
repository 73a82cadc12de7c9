"""LPIPS perceptual distance, AlexNet variant (Zhang et al., 2018).

The procedure is the one of the ``lpips`` package (``lpips.LPIPS(net="alex")``):
images in [-1, 1] are shifted and scaled to ImageNet statistics, five AlexNet
ReLU activations are taken, each is normalised to unit length along channels,
the squared differences go through learned non-negative 1×1 convolutions, are
averaged over space, and the five layers are summed.

The networks are written here in plain torch with the same parameter names,
so the original checkpoints load unchanged:

- backbone: torchvision's ImageNet AlexNet, ``alexnet-owt-7be5be79.pth``
  (keys ``features.0.weight`` ...; the classifier is not used);
- linear layers: the ``lpips`` package's ``weights/v0.1/alex.pth``
  (keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``).

Every weight is frozen, but the distance is differentiable with respect to
both images, so it serves as a perceptual training loss.
"""

from __future__ import annotations

import torch
from torch import nn

from dithead.metrics.weights import MissingWeightsError, StateSource, describe_source, load_into, load_state_dict

__all__ = ["LPIPS", "AlexNetFeatures", "MissingWeightsError", "BACKBONE_KEY", "LINEAR_KEY"]

BACKBONE_KEY = "weights.lpips_backbone"
LINEAR_KEY = "weights.lpips_linear"
BACKBONE_FILE = "torchvision's AlexNet checkpoint alexnet-owt-7be5be79.pth"
LINEAR_FILE = "the lpips package's linear layers weights/v0.1/alex.pth"

FEATURE_CHANNELS = (64, 192, 384, 256, 256)
MIN_SIDE = 31  # the smallest image AlexNet's two 3x3/2 max-pools still accept


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` up to the fifth ReLU; returns the five ReLU outputs."""

    RELU_INDICES = (1, 4, 7, 9, 11)

    def __init__(self):
        super().__init__()
        # Indices match torchvision, so its state dict keys (features.N.*) load as they are.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.RELU_INDICES:
                outputs.append(x)
        return outputs


class LinearLayer(nn.Module):
    """One learned 1×1 convolution to a single channel, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        # Index 0 is a Dropout in the lpips package (identity at evaluation);
        # keeping the slot keeps its checkpoint key, lin<k>.model.1.weight.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance; ``forward(x, y)`` on (B, 3, H, W) images in [-1, 1] returns (B,).

    ``backbone_path`` / ``linear_path``: checkpoint files (see module
    docstring) or state dicts. An empty or missing path raises
    :class:`MissingWeightsError` naming ``weights.lpips_backbone`` or
    ``weights.lpips_linear``.
    """

    def __init__(self, backbone_path: StateSource, linear_path: StateSource):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = AlexNetFeatures()
        for k, channels in enumerate(FEATURE_CHANNELS):
            self.add_module(f"lin{k}", LinearLayer(channels))
        self._load(backbone_path, linear_path)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def random_init(cls, seed: int = 0) -> "LPIPS":
        """Randomly initialised weights (tests, shape checks); not a meaningful distance."""
        backbone, linear = random_checkpoints(seed)
        return cls(backbone, linear)

    def _load(self, backbone_path: StateSource, linear_path: StateSource) -> None:
        backbone = load_state_dict(backbone_path, BACKBONE_KEY, BACKBONE_FILE)
        features = {k: v for k, v in backbone.items() if k.startswith("features.")}
        load_into(self.net, features, describe_source(backbone_path, BACKBONE_KEY))
        linear = load_state_dict(linear_path, LINEAR_KEY, LINEAR_FILE)
        lins = nn.ModuleDict({f"lin{k}": getattr(self, f"lin{k}") for k in range(len(FEATURE_CHANNELS))})
        load_into(lins, linear, describe_source(linear_path, LINEAR_KEY))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, y)
        feats_x = self.net((x - self.shift) / self.scale)
        feats_y = self.net((y - self.shift) / self.scale)
        distance = 0
        for k, (fx, fy) in enumerate(zip(feats_x, feats_y)):
            diff = (_unit_channels(fx) - _unit_channels(fy)) ** 2
            distance = distance + getattr(self, f"lin{k}")(diff).mean(dim=(2, 3))
        return distance[:, 0]


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


def _check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"LPIPS needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"LPIPS needs (B, 3, H, W) images, got {tuple(x.shape)}")
    if min(x.shape[2:]) < MIN_SIDE:
        raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, "
                         f"got {tuple(x.shape[2:])}")


def random_checkpoints(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(torchvision-style AlexNet state dict, lpips-style linear state dict), random.

    The backbone dict also has torchvision's classifier keys, and the linear
    weights are non-negative like the trained ones, so tests exercise the same
    loading path and a distance that is zero only for identical inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    backbone = {}
    for name, value in AlexNetFeatures().state_dict().items():
        if name.endswith("weight"):   # He initialisation keeps activations in range through the five layers
            backbone[name] = torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5
        else:
            backbone[name] = torch.zeros(value.shape)
    for index, (out_f, in_f) in {1: (4096, 256 * 6 * 6), 4: (4096, 4096), 6: (1000, 4096)}.items():
        # torchvision's classifier, at 1/64 of its size: only the keys matter, the metric drops them.
        backbone[f"classifier.{index}.weight"] = torch.zeros(out_f // 64, in_f // 64)
        backbone[f"classifier.{index}.bias"] = torch.zeros(out_f // 64)
    linear = {f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=generator)
              for k, c in enumerate(FEATURE_CHANNELS)}
    return backbone, linear
