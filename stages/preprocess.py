"""DVC stage `preprocess`: data/raw/* -> data/processed/<clip>/ + metrics/preprocess.json + mask previews."""

from __future__ import annotations

import sys
from pathlib import Path

from dithead.data.mask import MaskSettings
from dithead.params import load_params, section_config
from dithead.data.preprocess import PreprocessConfig, process_dir, report
from dithead.data.mask_preview import mask_preview, save_png
from dithead.fileio import atomic_path, write_json
from dithead.data.store import list_clips

PROCESSED = Path("data/processed")
REPORT = Path("metrics/preprocess.json")
PREVIEW_DIR = Path("metrics/preview")


def main() -> int:
    params = load_params()
    try:
        config = section_config(PreprocessConfig, params["preprocess"], "preprocess", fps=params["data"]["fps"],
                                sample_rate=params["data"]["sample_rate"])
        mask = section_config(MaskSettings, params["mask"], "mask")
    except ValueError as error:
        raise SystemExit(f"preprocess: {error}") from None
    # Build into a temporary folder: a failed run never leaves a half-written data/processed.
    with atomic_path(PROCESSED) as tmp:
        try:
            results = process_dir(params["data"]["raw_dir"], tmp, config, workers=config.workers)
        except (FileNotFoundError, ValueError) as error:   # no raw folder, no videos, two clips with one name
            raise SystemExit(f"preprocess: {error}") from None
        summary = report(results)
        write_json(REPORT, summary)
        for name, reason in summary["skipped_clips"].items():
            print(f"skipped {name}: {reason}", file=sys.stderr)
        if not summary["clips"]:
            raise SystemExit(f"preprocess: no clip could be used (see {REPORT})")
    write_previews(config.preview_frames, mask)
    print(f"preprocess: {summary['clips']} clips, {summary['frames']} frames "
          f"({summary['frames_without_face']} without a face), {summary['skipped']} skipped -> {PROCESSED}")
    return 0


def write_previews(frames: int, mask: MaskSettings) -> None:
    with atomic_path(PREVIEW_DIR) as tmp:
        tmp.mkdir(parents=True)
        for clip in list_clips(PROCESSED):
            save_png(tmp / f"{clip.name}.png", mask_preview(clip, frames, mask))


if __name__ == "__main__":
    sys.exit(main())
