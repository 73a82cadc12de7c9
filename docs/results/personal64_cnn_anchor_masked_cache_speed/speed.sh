#!/bin/bash
# DiT training speed of the personal profile with and without dit.cache_masked_latents, through the stage's own
# command; samples/s from dvclive's train/samples_per_s. Run it in a copy of a project folder where `dvc repro` of
# the personal profile has run on cnn_anchor (VQGANs trained), its params.yaml set to dit.steps 400,
# dit.val_every 400, dit.sample_every 100000, dit.checkpoint_every 0. Alone on the machine.
set -u
cd "${1:-.}"
for cache in false true; do
  rm -rf checkpoints/train_dit dvclive/train_dit models/dit
  sed -i "s/^  cache_masked_latents: .*/  cache_masked_latents: $cache/" params.yaml
  start=$(date +%s)
  docker/run-stage accelerate launch stages/train_dit.py > train_$cache.log 2>&1; echo "cache=$cache rc=$? wall=$(( $(date +%s) - start )) s"
  awk 'NR>1 && $1>50 {s+=$2;n++} END{printf "  mean samples/s after step 50: %.1f over %d logs\n", s/n, n}' dvclive/train_dit/plots/metrics/train/samples_per_s.tsv
  cp dvclive/train_dit/plots/metrics/train/samples_per_s.tsv samples_per_s_$cache.tsv
done
