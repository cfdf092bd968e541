#!/usr/bin/env bash
# Train on GPU nodes with SLURM: one process per node, all local GPUs per process.
# jax.distributed.initialize() reads the SLURM environment for the coordinator.
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh configs/cifar10.py:pgd_at /shared/runs/cifar10_pgd_at [--config.key=value ...]
#
# The global batch (config.batch_size) is split over all GPUs of all nodes: it must be
# divisible by their number. The workdir must be on a file system every node sees.
#SBATCH --job-name=robustgan
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: sbatch [--nodes=N --gpus-per-node=G] $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
export ROBUSTGAN_MULTIHOST=1
srun python -m robustgan.main --config "$config" --workdir "$workdir" "$@"
