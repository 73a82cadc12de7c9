"""Where inference-time stages run (training stages let accelerate decide), on how many CPU threads,
and in which precision.

``PRECISIONS`` is the one vocabulary of ``dit.mixed_precision``, ``vqgan.mixed_precision``
and ``sample.precision``: ``auto`` (bf16 on GPUs that support it, else full
precision), ``bf16``, ``fp16`` or ``no`` (full fp32 precision, accelerate's word).
"""

from __future__ import annotations

import os

PRECISIONS = ("auto", "bf16", "fp16", "no")


def default_device() -> str:
    """``DITHEAD_DEVICE`` if set (e.g. ``cpu``, ``cuda:1``), else the GPU when one is visible."""
    import torch

    return os.environ.get("DITHEAD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def cpu_threads() -> int:
    """Threads for torch on the CPU: ``DITHEAD_CPU_THREADS`` if set, else every core this process may use."""
    value = os.environ.get("DITHEAD_CPU_THREADS", "").strip()
    if not value:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"DITHEAD_CPU_THREADS must be a whole number >= 1, not {value!r}")
    return int(value)


def check_precision(choice: str, key: str) -> str:
    """``choice`` if it is one of ``PRECISIONS``; else a ValueError naming the param ``key``."""
    if choice not in PRECISIONS:
        raise ValueError(f"{key} must be one of {', '.join(PRECISIONS)}, not {choice!r}")
    return choice
