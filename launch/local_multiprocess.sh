#!/usr/bin/env bash
# Runs N local processes of cloob_jax.main that form one JAX run (a stand-in for N hosts):
#   launch/local_multiprocess.sh 2 2 --config=configs/demo.py --workdir=runs/demo_2x2
# Args: NUM_PROCESSES DEVICES_PER_PROCESS, then the flags for cloob_jax.main. CPU collectives go
# through gloo; process 0 coordinates on 127.0.0.1:$PORT (default 12355). The interpreter is
# $PYTHON (default: the first python on PATH), e.g. PYTHON=.venv/bin/python.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS --config=... --workdir=..." >&2
  exit 2
fi
num=$1; devices=$2; shift 2
port=${PORT:-12355}
python=${PYTHON:-python}
unset XLA_FLAGS  # the device count comes from --num_cpu_devices
pids=()
for ((i = 0; i < num; i++)); do
  "$python" -m cloob_jax.main "$@" --coordinator_address="127.0.0.1:$port" \
      --num_processes="$num" --process_id="$i" --num_cpu_devices="$devices" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
