"""Loading pretrained checkpoints from a configured local path.

Nothing here downloads: a pretrained network is read from the path set in
``params.yaml`` (``weights:`` section). An empty or wrong path raises
:class:`MissingWeightsError`, whose message names the key to set and the file
that is expected there. Checkpoints are read with ``weights_only=True``, so a
file cannot run code when it is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class WeightPaths:
    """The ``weights:`` params: local paths of the pretrained networks ("" = not available)."""

    inception_fid: str = ""     # FID: pytorch-fid's Inception v3
    syncnet: str = ""           # LSE-C / LSE-D: syncnet_python's syncnet_v2.model
    lpips_backbone: str = ""    # LPIPS: torchvision's AlexNet
    lpips_linear: str = ""      # LPIPS linear layers
    rife: str = ""              # 2x interpolation: RIFE flownet.pkl


def weight_paths(weights: "WeightPaths | Mapping[str, str] | None") -> WeightPaths:
    """``weights`` as :class:`WeightPaths`; a mapping (the params section, or flags) is checked key by key."""
    if isinstance(weights, WeightPaths):
        return weights
    from dithead.params import section_config

    return section_config(WeightPaths, weights, "weights")


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is not configured or not found."""

    def __init__(self, key: str, path: str | os.PathLike | None, expected: str):
        self.key = key
        self.path = "" if path is None else str(path)
        self.expected = expected
        if not self.path:
            reason = f"{key} is empty"
        else:
            reason = f"{key} points to {self.path}, which does not exist"
        super().__init__(f"{reason}; set {key} in params.yaml to the path of {expected}")


class WeightsFormatError(ValueError):
    """A weight file exists but is not the checkpoint the network expects."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        super().__init__(f"{path}: {problem}")


StateSource = str | os.PathLike | Mapping[str, torch.Tensor] | None


def load_state_dict(source: StateSource, key: str, expected: str) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint path (or an in-memory state dict, passed through).

    ``key`` (e.g. ``weights.lpips_backbone``) and ``expected`` (what file
    belongs there) only shape the error message.
    """
    if isinstance(source, Mapping):
        return dict(source)
    if source is None or str(source).strip() == "":
        raise MissingWeightsError(key, source, expected)
    path = Path(source).expanduser()
    if not path.is_file():
        raise MissingWeightsError(key, path, expected)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not a plain state dict, or a damaged file
        raise WeightsFormatError(path, f"cannot be read as a PyTorch state dict "
                                       f"({type(exc).__name__}: {exc}); expected {expected}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFormatError(path, f"is not a state dict of tensors; expected {expected}")
    return dict(state)


def describe_source(source: StateSource, key: str) -> str:
    """How a checkpoint source is named in messages: its path, or the key for an in-memory dict."""
    return f"{key} (state dict)" if isinstance(source, Mapping) else str(source)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], origin: str,
              optional: tuple[str, ...] = ("num_batches_tracked",)) -> None:
    """Copy ``state`` into ``module``; every parameter and buffer must be present with its shape.

    Extra keys in ``state`` (e.g. a classifier head the metric does not use)
    must have been dropped by the caller. Buffers whose name ends with one of
    ``optional`` may be absent (old checkpoints predate BatchNorm's counter).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (network: {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {_first(wrong)}")
    if problems:
        raise WeightsFormatError(origin, "does not match the network: " + "; ".join(problems))
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def _first(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return f"{shown} (+{len(items) - n} more)" if len(items) > n else shown
