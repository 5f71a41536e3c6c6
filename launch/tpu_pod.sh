#!/usr/bin/env bash
# Starts the same command on every worker of a TPU VM pod slice; jax.distributed initialises
# itself there (no coordinator flags needed):
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/yfcc.py:model=RN50,data_dir=... --workdir=gs://...
set -euo pipefail
name=$1; zone=$2; shift 2
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
  --command="cd ~/cloob_jax && python -m cloob_jax.main $*"
