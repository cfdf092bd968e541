#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host; JAX finds the
# other hosts itself (jax.distributed.initialize() with no arguments on TPU VMs).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/cifar10.py:pgd_at gs://BUCKET/runs/cifar10_pgd_at [--config.key=value ...]
#
# ROBUSTGAN_REPO names the git URL each host clones. The workdir must be shared by all hosts (a GCS bucket); orbax writes checkpoints there.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${ROBUSTGAN_REPO:?set ROBUSTGAN_REPO to the git URL of your robustgan checkout}
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  [ -d robustgan ] || git clone $repo robustgan
  cd robustgan && git pull --ff-only
  pip install -q -e . 'jax[tpu]'
  ROBUSTGAN_MULTIHOST=1 python -m robustgan.main --config $config --workdir $workdir $*
"
