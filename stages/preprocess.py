"""DVC stage `preprocess`: data/raw/* -> data/processed/<clip>/ + metrics/preprocess.json + mask previews."""

from __future__ import annotations

import sys
from pathlib import Path

from dithead.data.mask import MaskSettings
from dithead.data.mask_preview import mask_preview, save_png
from dithead.data.preprocess import PreprocessConfig, process_dir, report
from dithead.data.store import list_clips
from dithead.fileio import atomic_path, write_json
from dithead.params import load_params, section_config
from dithead.stage import StageError, StagePaths, clear_errors

STAGE = "preprocess"


def main() -> int:
    params = load_params()
    # no raw folder, no videos, two clips with one name, a bad parameter
    with clear_errors(STAGE, FileNotFoundError, ValueError):
        paths = section_config(StagePaths, params.get("paths"), "paths")
        config = section_config(PreprocessConfig, params["preprocess"], "preprocess", fps=params["data"]["fps"],
                                sample_rate=params["data"]["sample_rate"])
        mask = section_config(MaskSettings, params["mask"], "mask")
        report_path = paths.metrics / "preprocess.json"
        # Build into a temporary folder: a failed run never leaves a half-written data/processed.
        with atomic_path(paths.processed) as tmp:
            results = process_dir(params["data"]["raw_dir"], tmp, config, workers=config.workers)
            summary = report(results)
            write_json(report_path, summary)
            for name, reason in summary["skipped_clips"].items():
                print(f"skipped {name}: {reason}", file=sys.stderr)
            if not summary["clips"]:
                raise StageError(f"no clip could be used (see {report_path})")
        write_previews(paths.processed, paths.metrics / "preview", config.preview_frames, mask)
    print(f"preprocess: {summary['clips']} clips, {summary['frames']} frames "
          f"({summary['frames_without_face']} without a face), {summary['skipped']} skipped -> {paths.processed}")
    return 0


def write_previews(processed: Path, preview_dir: Path, frames: int, mask: MaskSettings) -> None:
    with atomic_path(preview_dir) as tmp:
        tmp.mkdir(parents=True)
        for clip in list_clips(processed):
            save_png(tmp / f"{clip.name}.png", mask_preview(clip, frames, mask))


if __name__ == "__main__":
    sys.exit(main())
