#!/usr/bin/env bash
# Train on all GPUs of one machine (single process; jit shards the batch over them).
#
#   launch/gpu_local.sh configs/mnist.py:pgd_at runs/mnist_pgd_at [--config.key=value ...]
#
# Needs the CUDA build of JAX: pip install -U "jax[cuda12]"
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
python -c "import jax; print('devices:', jax.devices())"
exec python -m robustgan.main --config "$config" --workdir "$workdir" "$@"
