"""Where inference-time stages run (training stages let accelerate decide)."""

from __future__ import annotations

import os


def default_device() -> str:
    """``DITHEAD_DEVICE`` if set (e.g. ``cpu``, ``cuda:1``), else the GPU when one is visible."""
    import torch

    return os.environ.get("DITHEAD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
