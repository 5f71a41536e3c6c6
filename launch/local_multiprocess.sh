#!/usr/bin/env bash
# Runs N local processes of cloob_jax.main that form one JAX run (a stand-in for N hosts):
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES DEVICES_PER_PROCESS FLAGS...
#   launch/local_multiprocess.sh 2 2 --config=configs/demo.py --workdir=runs/demo_2x2
# Args: NUM_PROCESSES DEVICES_PER_PROCESS, then the flags for cloob_jax.main. CPU collectives go
# through gloo; process 0 coordinates on 127.0.0.1:$PORT (default 12355). The interpreter is
# $PYTHON (default: the first python on PATH), e.g. PYTHON=.venv/bin/python. Output of all
# processes goes to this terminal; the exit status is the last failing process's, else 0.
# --dry-run (or DRY_RUN=1), first: print the N commands, one per line, and run nothing.
set -euo pipefail
case ${1:-} in
  -h|--help)
    # shellcheck source=lib/help.sh
    . "$(dirname "${BASH_SOURCE[0]}")/lib/help.sh"
    print_header_help "${BASH_SOURCE[0]}" ;;
esac
dry_run=${DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
if [ $# -lt 2 ] || [[ ! $1 =~ ^[1-9][0-9]*$ ]] || [[ ! $2 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--dry-run] NUM_PROCESSES DEVICES_PER_PROCESS --config=... --workdir=..." >&2
  exit 2
fi
num=$1; devices=$2; shift 2
port=${PORT:-12355}
python=${PYTHON:-python}
unset XLA_FLAGS  # the device count comes from --num_cpu_devices
[ "$dry_run" = 1 ] && printf 'unset XLA_FLAGS\n'
pids=()
for ((i = 0; i < num; i++)); do
  cmd=("$python" -m cloob_jax.main "$@" --coordinator_address="127.0.0.1:$port"
       --num_processes="$num" --process_id="$i" --num_cpu_devices="$devices")
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    printf '&\n'
    continue
  fi
  "${cmd[@]}" &
  pids+=($!)
done
[ "$dry_run" = 1 ] && { printf 'wait\n'; exit 0; }
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
