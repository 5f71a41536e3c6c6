#!/usr/bin/env bash
# The train step on this machine's accelerator, one table: `python -m cloob_jax.bench train`
# for ViT-B/32, ViT-B/16 and RN50, CLIP and CLOOB, bfloat16, batch 256-1024 per chip, einsum vs
# cuDNN attention, rematerialisation, scan over layers on or off, each case in its own process;
# then images/s, step time, compile time, MFU and memory per case. Stops starting new cases
# after BUDGET_S seconds (default 420), so that a run on one H200 ends within 8 minutes.
#
#   bash cloob_jax/bench/device_check.sh [--cpu] [OUT_DIR]
#
# --cpu: the same script on a tiny model and batch (what the test suite runs).
# A machine whose Python lacks grain or ml_collections (they are imported by the trainer):
# download the wheels on a machine with the registry, e.g.
#   pip download -d wheels --python-version 3.12 --only-binary=:all: grain ml-collections \
#       array-record etils
# carry wheels/ along, and run with WHEELS=wheels: they are installed from there first.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python}
MODE=device
if [[ "${1:-}" == "--cpu" ]]; then
  MODE=cpu
  shift
fi
OUT=${1:-$(mktemp -d /tmp/cloob_jax_device_check.XXXXXX)}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT"

if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" grain ml-collections
  "$PYTHON" -m pip install -q --no-index --no-deps -e .
fi

# model method batch attention remat(0 = the model's default/off/full/dots) scan(on/off)
if [[ "$MODE" == cpu ]]; then
  CASES=("ViT-tiny clip 8 einsum 0 off" "ViT-tiny cloob 8 xla full on")
  STEPS=(--steps=1 --warmup=0 --dtype=float32)
else
  CASES=(
    "ViT-B/32 clip 1024 einsum 0 off" "ViT-B/32 cloob 1024 einsum 0 off"
    "ViT-B/32 clip 1024 cudnn 0 off" "ViT-B/32 clip 1024 cudnn 0 on"
    "ViT-B/16 clip 512 einsum 0 off" "ViT-B/16 cloob 512 einsum 0 off"
    "ViT-B/16 clip 512 cudnn 0 off" "ViT-B/16 clip 512 cudnn 0 on"
    "ViT-B/16 cloob 512 cudnn full on" "ViT-B/16 cloob 512 cudnn dots on"
    "RN50 clip 512 einsum 0 off" "RN50 cloob 512 einsum 0 off" "RN50 clip 256 einsum 0 off"
  )
  STEPS=(--steps=10 --warmup=2 --dtype=bfloat16)
fi

start=$SECONDS
i=0
for case in "${CASES[@]}"; do
  read -r model method batch attention remat scan <<<"$case"
  if (( SECONDS - start > BUDGET_S )); then
    echo "budget of ${BUDGET_S} s spent: skipping $case" >&2
    continue
  fi
  i=$((i + 1))
  extra=(--scan="$scan")
  if [[ "$remat" != 0 ]]; then
    extra+=(--remat="$remat")
  fi
  echo "== $case" >&2
  if ! "$PYTHON" -m cloob_jax.bench train --config=configs/demo.py --model="$model" \
      --method="$method" --batch_size="$batch" --attention="$attention" "${STEPS[@]}" \
      "${extra[@]}" --json="$OUT/case$i.json" >"$OUT/case$i.log" 2>&1; then
    echo "failed: $case (last lines of $OUT/case$i.log):" >&2
    tail -n 5 "$OUT/case$i.log" >&2
  fi
done

"$PYTHON" - "$OUT" <<'EOF'
import glob, json, os, sys
rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(sys.argv[1], "case*.json")),
                                           key=lambda p: int(p.split("case")[-1][:-5]))]
if not rows:
  sys.exit("no case finished")
gib = 1024**3
print(f"device: {rows[0]['device_kind']} ({rows[0]['backend']}), {rows[0]['devices']} device(s)")
print("| model | method | batch | dtype | attention | remat | scan | compile s | step ms "
      "| images/s | MFU | temp GiB | peak GiB |")
print("|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
  memory = r.get("memory", {})
  mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
  temp = f"{memory['temp_bytes'] / gib:.2f}" if "temp_bytes" in memory else "n/a"
  peak = f"{memory['device_peak_bytes'] / gib:.2f}" if "device_peak_bytes" in memory else "n/a"
  print(f"| {r['model']} | {r['method']} | {r['batch_size']} | {r['dtype']} | {r['attention']} "
        f"| {r['remat'] or 'no'} | {'+'.join(r.get('scan') or ['no'])} "
        f"| {r['compile_s']:.1f} | {1e3 * r['step_s']:.1f} "
        f"| {r['images_per_s']:.0f} | {mfu} | {temp} | {peak} |")
EOF
