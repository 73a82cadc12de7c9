"""On-disk store of one preprocessed clip (see docs/ARCHITECTURE.md).

Crops are encoded one by one (JPEG or PNG) and appended to a single file, with
an index of byte offsets: a random frame costs one small read and one decode,
so training reads random frames fast without unpacking whole videos, and a
clip is two files instead of thousands. ``bench/preprocess.py`` measures the
codecs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np

CROPS_FILE = "crops.bin"
INDEX_FILE = "crops.idx.npy"


class CropStoreWriter:
    """Appends RGB uint8 crops to ``crops.bin``; ``close()`` writes the index."""

    def __init__(self, directory: str | os.PathLike, codec: str = "jpg", jpeg_quality: int = 95):
        if codec not in ("jpg", "png"):
            raise ValueError(f"crop codec must be 'jpg' or 'png', not {codec!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ext = "." + codec
        self._flags = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
        self._file = open(self.directory / CROPS_FILE, "wb")
        self._offsets = [0]

    def append(self, crop_rgb: np.ndarray) -> None:
        ok, buf = cv2.imencode(self._ext, cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), self._flags)
        if not ok:
            raise RuntimeError(f"could not encode crop {len(self._offsets) - 1} as {self._ext}")
        self._file.write(buf.tobytes())
        self._offsets.append(self._offsets[-1] + len(buf))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            np.save(self.directory / INDEX_FILE, np.asarray(self._offsets, dtype=np.int64))

    def __enter__(self) -> "CropStoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CropStore:
    """Random-access reader; the file is memory-mapped on first read in each process."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.offsets = np.load(self.directory / INDEX_FILE)
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} crops in {self.directory}")
        i %= len(self)
        if self._data is None:
            self._data = np.memmap(self.directory / CROPS_FILE, dtype=np.uint8, mode="r")
        bgr = cv2.imdecode(np.asarray(self._data[self.offsets[i]:self.offsets[i + 1]]), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}  # memmaps are reopened per process


class ProcessedClip:
    """Everything preprocess wrote for one clip; arrays are loaded lazily."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.directory} is not a preprocessed clip (no meta.json)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.name = self.meta.get("name", self.directory.name)
        self.store = CropStore(self.directory)
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.store)

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.directory / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    @property
    def landmarks(self) -> np.ndarray:
        return self._array("landmarks")

    @property
    def valid(self) -> np.ndarray:
        return self._array("valid")

    @property
    def boxes(self) -> np.ndarray:
        return self._array("boxes")

    @property
    def source_index(self) -> np.ndarray:
        return self._array("source_index")

    @property
    def audio_path(self) -> Path:
        return self.directory / "audio.wav"

    def crop(self, i: int) -> np.ndarray:
        return self.store[i]

    def crops(self, indices) -> np.ndarray:
        return np.stack([self.store[int(i)] for i in indices])

    def fingerprint(self) -> str:
        """SHA-256 of what training reads from the clip: the crops (their index and total size), the
        landmarks (the masks come from them) and which frames have a face. Re-preprocessing with other
        crops or masks changes it even when the length stays the same; a checkpoint or latent cache made
        from other data is then stale."""
        digest = hashlib.sha256()
        digest.update((self.directory / "crops.idx.npy").read_bytes())
        digest.update(str((self.directory / "crops.bin").stat().st_size).encode())
        digest.update((self.directory / "landmarks.npy").read_bytes())
        digest.update(np.ascontiguousarray(self.valid, dtype=bool).tobytes())
        return digest.hexdigest()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}


def list_clips(processed_dir: str | os.PathLike) -> list[ProcessedClip]:
    """Every preprocessed clip under ``processed_dir``, sorted by name."""
    root = Path(processed_dir)
    return [ProcessedClip(d) for d in sorted(root.iterdir()) if (d / "meta.json").is_file()]
