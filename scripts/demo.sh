#!/usr/bin/env bash
# Fresh machine -> a real pretraining run on the embedded default data, then a linear-probe/kNN
# evaluation and a reconstruction figure. Prints where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
recipe="${1:-vision/spark}"
run_dir="runs/demo/${recipe//\//-}-$(date +%Y%m%d-%H%M%S)"
omnimask=(.venv/bin/omnimask)

"${omnimask[@]}" pretrain "$recipe" --preset demo --run-dir "$run_dir"
"${omnimask[@]}" eval "$run_dir"
"${omnimask[@]}" visualize "$run_dir"
"${omnimask[@]}" export "$run_dir" --format safetensors
echo
echo "demo finished. Run directory: $run_dir"
echo "  config:        $run_dir/config.yaml"
echo "  checkpoints:   $run_dir/checkpoints/"
echo "  metrics:       $run_dir/metrics.jsonl (TensorBoard: .venv/bin/tensorboard --logdir $run_dir)"
echo "  evaluation:    $run_dir/eval.json"
echo "  figure:        $(ls "$run_dir"/figures/reconstruction_*.png | tail -1)"
echo "  health:        $run_dir/figures/health.png (loss, RankMe, embedding std)"
echo "  encoder:       $run_dir/exports/safetensors/encoder.safetensors"
