#!/usr/bin/env bash
# Sets up, starts, follows and stops cloob_jax on every worker of a Cloud TPU VM (pod slice),
# through `gcloud compute tpus tpu-vm ssh/scp NAME --zone=ZONE --worker=all`.
#
#   launch/tpu_pod.sh [--dry-run] setup NAME ZONE
#   launch/tpu_pod.sh [--dry-run] [--no-check] run NAME ZONE -- ARGS...  (ARGS: cloob_jax.main's)
#   launch/tpu_pod.sh [--dry-run] logs  NAME ZONE [N]          (last N lines per worker, default 50)
#   launch/tpu_pod.sh [--dry-run] stop  NAME ZONE              (SIGTERM: the run saves, then exits)
#
# Example:
#   launch/tpu_pod.sh setup my-v4-32 us-central2-b
#   launch/tpu_pod.sh run my-v4-32 us-central2-b -- \
#       --config=configs/yfcc.py:model=RN50,data_dir=/mnt/yfcc --workdir=gs://BUCKET/runs/rn50
#   launch/tpu_pod.sh logs my-v4-32 us-central2-b 20
#
# setup: `git archive HEAD` of this checkout (committed files only: commit first) is copied to
#   every worker and unpacked into $REPO_DIR (default ~/cloob_jax; a path under ~ or absolute);
#   on first use a venv $REPO_DIR/.venv is made with $REMOTE_PYTHON (default python3) if it is
#   Python >= 3.11. TPU VM images ship an older python3: then, with PYTHON_BOOTSTRAP=uv (the
#   default), each worker installs uv (astral.sh's installer, into ~/.local/bin, unless there)
#   and with it Python 3.12 (`uv python install 3.12`, in ~/.local/share/uv; no root needed)
#   and makes the venv with that; PYTHON_BOOTSTRAP=none stops instead, saying so. Then
#   `pip install -e '.[tpu]'` (jax[tpu]) runs in the venv. Re-running setup updates the code
#   and keeps the venv and the logs.
# run: first loads the config here, in this checkout (`$LOCAL_PYTHON -m cloob_jax.main ARGS...
#   --print_config`, LOCAL_PYTHON default python3, which needs cloob_jax installed): a
#   mistyped key or bad value stops it before any ssh, where on the workers it would show only
#   in `logs`. --no-check skips that (a config that reads files only the workers have, e.g.
#   configs/own_data.py's manifest on a gcsfuse mount). Then it starts
#   `python -m cloob_jax.main ARGS...` with nohup in the background on every worker
#   (refused on a worker whose previous run is still alive), appending to
#   $REPO_DIR/logs/HOSTNAME.log (its pid in HOSTNAME.pid). No coordinator flags are passed:
#   the binary initialises jax.distributed itself (cloob_jax/distributed.py). Every argument
#   reaches the workers unchanged (spaces, quotes, $, commas): each is quoted for the remote
#   shell. The workdir must be one every worker sees, e.g. gs://...; re-running the
#   same command resumes from its latest checkpoint.
# --dry-run (or DRY_RUN=1), before the subcommand: prints each command it would run, one per
#   line and quoted so that it can be pasted, and runs nothing (no gcloud needed).
# GCLOUD_FLAGS: extra words for every gcloud call, e.g. GCLOUD_FLAGS='--project=P --internal-ip'.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_pod.sh [--dry-run] setup NAME ZONE
       launch/tpu_pod.sh [--dry-run] [--no-check] run NAME ZONE -- ARGS...
       launch/tpu_pod.sh [--dry-run] logs NAME ZONE [N]
       launch/tpu_pod.sh [--dry-run] stop NAME ZONE
EOF
  exit 2
}


# shellcheck source=lib/quote.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/quote.sh"  # sh_quote, word_quote, print_cmd
# shellcheck source=lib/help.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/help.sh"  # print_header_help: --help, exit 0

# Words -> one line of POSIX shell words (newlines stay inside the quotes).
sh_words() {
  local w out=""
  for w in "$@"; do
    out+="${out:+ }$(sh_quote "$w")"
  done
  printf '%s' "$out"
}

# Runs a command, or prints it under --dry-run.
do_cmd() {
  if [ "$dry_run" = 1 ]; then
    print_cmd "$@"
  else
    "$@"
  fi
}

# REPO_DIR for the remote shell: ~ and ~/REST become "$HOME" and "$HOME"/REST.
remote_dir() {
  local home="\"\$HOME\""
  case $1 in
    \~) printf '%s' "$home" ;;
    \~/*) printf '%s/%s' "$home" "$(sh_quote "${1#??}")" ;;
    /*) sh_quote "$1" ;;
    *) echo "tpu_pod.sh: REPO_DIR must be absolute or start with ~/ (got '$1')" >&2; usage ;;
  esac
}

# The command each worker's shell runs for a subcommand (its $... expand there, not here).
# shellcheck disable=SC2016  # the single-quoted text is code for the worker's shell
remote_script() {
  local dir=$1 python=$2 subcommand=$3 script
  shift 3
  # Every worker's own log and pid file, named after its hostname.
  local per_worker='h=$(hostname); log=logs/$h.log; pidf=logs/$h.pid'
  local alive='[ -f "$pidf" ] && grep -qa cloob_jax.main "/proc/$(cat "$pidf")/cmdline" 2>/dev/null'
  case $subcommand in
    setup)  # $1: the tarball in the worker's home directory, $2: the PYTHON_BOOTSTRAP
      local version_check='import sys; sys.exit(sys.version_info < (3, 11))'
      local install_check='import socket, jax, cloob_jax; '
      install_check+='print(socket.gethostname(), "ok: cloob_jax installed, jax", jax.__version__)'
      local old='echo "$(hostname): '"$python"' is not Python >= 3.11'
      script="set -e; mkdir -p $dir; tar -xzf \"\$HOME\"/$1 -C $dir; rm -f \"\$HOME\"/$1; cd $dir"
      script+="; if [ ! -x .venv/bin/python ]; then py=$python"
      script+="; if ! \"\$py\" -c $(sh_quote "$version_check") 2>/dev/null; then"
      if [ "$2" = uv ]; then
        # uv's own installer and its Python builds: no root, no apt, the same on every image.
        script+=" $old"': installing Python 3.12 with uv" >&2; uv="$HOME"/.local/bin/uv'
        script+='; [ -x "$uv" ] || curl -LsSf https://astral.sh/uv/install.sh'
        script+=' | env UV_INSTALL_DIR="$HOME"/.local/bin UV_NO_MODIFY_PATH=1'
        script+=' INSTALLER_NO_MODIFY_PATH=1 sh'
        script+='; [ -x "$uv" ] || { echo "$(hostname): could not install uv into ~/.local/bin'
        script+=' (no internet?): set REMOTE_PYTHON to a Python >= 3.11" >&2; exit 1; }'
        script+='; "$uv" python install 3.12; py=$("$uv" python find 3.12)'
      else
        script+=" $old"': set REMOTE_PYTHON to one, or PYTHON_BOOTSTRAP=uv to install'
        script+=' Python 3.12 with uv" >&2; exit 1'
      fi
      script+='; fi; "$py" -m venv .venv; fi'
      script+="; .venv/bin/python -m pip install -q --upgrade pip"
      script+="; .venv/bin/python -m pip install -e '.[tpu]'"
      script+="; .venv/bin/python -c $(sh_quote "$install_check")"
      ;;
    run)  # "$@": the flags of cloob_jax.main
      script="set -e; cd $dir; mkdir -p logs; $per_worker"
      script+="; if $alive; then"
      script+=' echo "$h: cloob_jax.main is still running (pid $(cat "$pidf")): stop it first" >&2;'
      script+=' exit 1; fi'
      script+="; PYTHONUNBUFFERED=1 nohup .venv/bin/python -m cloob_jax.main $(sh_words "$@")"
      script+=' >>"$log" 2>&1 </dev/null & echo $! >"$pidf"'
      script+='; echo "$h: started pid $(cat "$pidf"), log '"$dir"'/$log"'
      ;;
    logs)  # $1: lines
      script="cd $dir; $per_worker; tail -v -n $1 \"\$log\""
      ;;
    stop)
      script="cd $dir; $per_worker; if $alive; then"
      script+=' kill -TERM "$(cat "$pidf")" && echo "$h: sent SIGTERM to pid $(cat "$pidf")";'
      script+=' else echo "$h: not running"; fi'
      ;;
  esac
  printf '%s' "$script"
}

dry_run=${DRY_RUN:-0}
check=1
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --no-check) check=0; shift ;;
    -h|--help) print_header_help "${BASH_SOURCE[0]}" ;;
    -*) echo "tpu_pod.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] || usage
subcommand=$1; name=$2; zone=$3; shift 3
[ -n "$name" ] && [ -n "$zone" ] || usage

gcloud_flags=()
read -r -a gcloud_flags <<< "${GCLOUD_FLAGS:-}"
dir=$(remote_dir "${REPO_DIR:-~/cloob_jax}")
remote_python=$(sh_quote "${REMOTE_PYTHON:-python3}")
bootstrap=${PYTHON_BOOTSTRAP:-uv}
case $bootstrap in
  uv|none) ;;
  *) echo "tpu_pod.sh: PYTHON_BOOTSTRAP must be uv or none (got '$bootstrap')" >&2; usage ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ssh=(gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all
     ${gcloud_flags[@]+"${gcloud_flags[@]}"})
case $subcommand in
  setup)
    [ $# -eq 0 ] || usage
    tarball=${TMPDIR:-/tmp}/cloob_jax-setup-$$.tar.gz
    remote_tarball=cloob_jax-setup.tar.gz  # in the worker's home directory
    if [ "$dry_run" != 1 ]; then
      trap 'rm -f "$tarball"' EXIT
      if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
        echo "tpu_pod.sh: note: uncommitted changes are not copied (git archive HEAD)" >&2
      fi
    fi
    do_cmd git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
    do_cmd gcloud compute tpus tpu-vm scp "$tarball" "$name:$remote_tarball" --zone="$zone" \
        --worker=all ${gcloud_flags[@]+"${gcloud_flags[@]}"}
    do_cmd "${ssh[@]}" --command="$(remote_script "$dir" "$remote_python" setup "$remote_tarball" \
        "$bootstrap")"
    do_cmd rm -f "$tarball"
    ;;
  run)
    [ $# -ge 2 ] && [ "$1" = "--" ] || usage
    shift
    on_gcs=0 prev=""
    for arg in "$@"; do
      if [[ $arg == --workdir=gs://* || ($prev == --workdir && $arg == gs://*) ]]; then on_gcs=1; fi
      prev=$arg
    done
    if [ "$on_gcs" = 0 ]; then
      echo "tpu_pod.sh: note: --workdir is not gs://...; every worker must see the same one" >&2
    fi
    if [ "$check" = 1 ]; then
      # The config as every worker will load it (relative paths from the checkout's root).
      local_check=("${LOCAL_PYTHON:-python3}" -m cloob_jax.main "$@" --print_config)
      if [ "$dry_run" = 1 ]; then
        printf '(cd %s && %s >/dev/null)\n' "$(word_quote "$root")" \
            "$(print_cmd "${local_check[@]}")"
      elif ! (cd "$root" && "${local_check[@]}" >/dev/null); then
        echo "tpu_pod.sh: the config does not load here (above), so nothing was started;" \
             "--no-check skips this check for a config that needs the workers' files" >&2
        exit 2
      fi
    fi
    do_cmd "${ssh[@]}" --command="$(remote_script "$dir" "$remote_python" run "$@")"
    ;;
  logs)
    [ $# -le 1 ] || usage
    lines=${1:-50}
    [[ $lines =~ ^[0-9]+$ ]] || usage
    do_cmd "${ssh[@]}" --command="$(remote_script "$dir" "$remote_python" logs "$lines")"
    ;;
  stop)
    [ $# -eq 0 ] || usage
    do_cmd "${ssh[@]}" --command="$(remote_script "$dir" "$remote_python" stop)"
    ;;
  *)
    echo "tpu_pod.sh: unknown subcommand '$subcommand'" >&2
    usage
    ;;
esac
