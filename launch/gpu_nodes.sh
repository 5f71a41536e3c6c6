#!/usr/bin/env bash
# One cloob_jax run over N GPU machines started by hand (no SLURM): run this on every machine,
# from the repository root, with the same coordinator and ARGS and that machine's rank. Each
# node is one JAX process holding all of its GPUs; node 0 serves the coordinator on HOST:PORT
# (HOST: node 0's address as the other nodes reach it; PORT: any free port).
#
#   launch/gpu_nodes.sh [--dry-run] --coordinator=HOST:PORT --num_nodes=N --node_rank=I -- ARGS...
#
# Example, two machines (on node1 the same line with --node_rank=1):
#   node0$ launch/gpu_nodes.sh --coordinator=10.0.0.1:12355 --num_nodes=2 --node_rank=0 -- \
#              --config=configs/cc3m.py:model=RN50,data_dir=/data/cc3m --workdir=/shared/runs/rn50
#
# Runs, in the foreground, `python -m cloob_jax.main ARGS... --coordinator_address=HOST:PORT
# --num_processes=N --process_id=I`, its output shown and appended to
# $LOG_DIR/HOSTNAME-rankI.log (LOG_DIR default: logs); exits with its status. For a background
# run: `nohup launch/gpu_nodes.sh ... >/dev/null 2>&1 &`. The interpreter is $PYTHON, else
# $VENV/bin/python (VENV default .venv) if it exists, else python. The workdir must be one all
# nodes see (a shared filesystem or gs://...); re-running the same commands resumes from its
# latest checkpoint. --dry-run (or DRY_RUN=1), first: print the command, run nothing.
set -euo pipefail

usage() {
  echo "usage: launch/gpu_nodes.sh [--dry-run] --coordinator=HOST:PORT --num_nodes=N" \
       "--node_rank=I -- ARGS..." >&2
  exit 2
}

# shellcheck source=lib/quote.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/quote.sh"  # word_quote, print_cmd
# shellcheck source=lib/help.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/help.sh"  # print_header_help

dry_run=${DRY_RUN:-0}
coordinator="" num_nodes="" node_rank=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    -h|--help) print_header_help "${BASH_SOURCE[0]}" ;;
    --coordinator=*) coordinator=${1#*=} ;;
    --num_nodes=*) num_nodes=${1#*=} ;;
    --node_rank=*) node_rank=${1#*=} ;;
    --) shift; break ;;
    *) echo "gpu_nodes.sh: unknown option '$1' (the flags of cloob_jax.main go after --)" >&2
       usage ;;
  esac
  shift
done
if [[ ! $coordinator =~ ^[^[:space:]:]+:[0-9]+$ ]]; then
  echo "gpu_nodes.sh: --coordinator=HOST:PORT is required (got '$coordinator')" >&2
  usage
fi
if [[ ! $num_nodes =~ ^[1-9][0-9]*$ ]] || [[ ! $node_rank =~ ^[0-9]+$ ]] ||
    [ "$node_rank" -ge "$num_nodes" ]; then
  echo "gpu_nodes.sh: need --num_nodes=N >= 1 and --node_rank=I with 0 <= I < N" \
       "(got '$num_nodes', '$node_rank')" >&2
  usage
fi
[ $# -gt 0 ] || usage

venv=${VENV:-.venv}
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x "$venv/bin/python" ]; then
  python=$venv/bin/python
else
  python=python
fi
log_dir=${LOG_DIR:-logs}
log=$log_dir/$(hostname)-rank$node_rank.log
cmd=(env PYTHONUNBUFFERED=1 "$python" -m cloob_jax.main "$@" --coordinator_address="$coordinator"
     --num_processes="$num_nodes" --process_id="$node_rank")
if [ "$dry_run" = 1 ]; then
  print_cmd mkdir -p "$log_dir"
  printf '%s 2>&1 | tee -a %s\n' "$(print_cmd "${cmd[@]}")" \
      "$(word_quote "$log")"
  exit 0
fi
mkdir -p "$log_dir"
echo "gpu_nodes.sh: node $node_rank of $num_nodes, coordinator $coordinator, log $log" >&2
"${cmd[@]}" 2>&1 | tee -a "$log"
