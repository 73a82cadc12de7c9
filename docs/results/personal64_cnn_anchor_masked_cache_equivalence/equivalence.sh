#!/bin/bash
# (The results beside this script were made the same way by hand: copies of the run folder, the two params edited.)
# The DiT stage with and without dit.cache_masked_latents, 500 steps each, on the same data and VQGANs.
# Run in a project folder where `dvc repro` of the personal profile has run (cnn_anchor), one after the other,
# alone on the machine; compares dvclive's train/loss and val/* curves.
set -euo pipefail
for cache in true false; do
  dir=../eq_$cache && rm -rf "$dir" && cp -a . "$dir" && cd "$dir"
  rm -rf checkpoints/train_dit dvclive/train_dit
  python - "$cache" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["dit"].update(steps=500, cache_masked_latents=sys.argv[1] == "true")
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
  python stages/train_dit.py
  cd - > /dev/null
done
paste ../eq_true/dvclive/train_dit/plots/metrics/train/loss.tsv ../eq_false/dvclive/train_dit/plots/metrics/train/loss.tsv
tail -qn1 ../eq_{true,false}/dvclive/train_dit/plots/metrics/val/*.tsv
