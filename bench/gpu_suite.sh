#!/usr/bin/env bash
# The GPU numbers in bench/README.md, all in one go, on one H100 / H200 with a stock CUDA PyTorch +
# transformers (no vLLM, no network): bench/gpu_fsdp.py at R1-Distill-Qwen-1.5B size in four settings.
#
#   bash bench/gpu_suite.sh [OUTDIR] [extra gpu_fsdp.py flags, appended to every run]
#   bash bench/gpu_suite.sh out/bench/gpu --profile          # as measured: + one profiled step per setting
#   PYTHON=.venv/bin/python bash bench/gpu_suite.sh /tmp/g --tiny --seq-len 64 --micro-batch 2   # CPU smoke
#
#   mb8         8 x 4096 tokens per micro-batch, activation checkpointing, foreach AdamW; + transformers generate
#   mb8_fused   the same with AdamW(fused=True)
#   mb4_nockpt  4 x 4096, activation checkpointing off (no recompute: MFU = HFU)
#   s8k_mb4     4 x 8192 (ProRL's 8k response length), activation checkpointing
#
# Writes OUTDIR/<name>.json per run, OUTDIR/suite.log (all output) and OUTDIR/gpu.txt (nvidia-smi, versions);
# prints one summary line per run. A run that fails or passes its time limit is reported and the rest go on.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/bench/gpu}
shift || true
PY=${PYTHON:-python3}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

run() {
  local name=$1; shift
  echo "== $name: $*" >> "$out/suite.log"
  local t0=$SECONDS
  PYTHONUNBUFFERED=1 timeout "${RUN_LIMIT_S:-240}" "$PY" bench/gpu_fsdp.py --out "$out/$name.json" "$@" >> "$out/suite.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    "$PY" - "$out/$name.json" "$name" $((SECONDS - t0)) <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); u = r["update"]; m = r["memory"]; g = r.get("generation") or {}
mfu = f"{u['mfu']:.3f}" if u.get("mfu") is not None else "-"
hfu = f"{u['hfu']:.3f}" if u.get("hfu") is not None else "-"
mem = m.get("peak_allocated_gib", m.get("peak_rss_gib"))
print(f"{sys.argv[2]}: micro {u['micro_batch']} x {r['settings']['seq_len']}  step {u['step_time_s_median']} s  "
      f"{u['tokens_per_s']:.0f} tok/s  MFU {mfu}  HFU {hfu}  peak {mem:.1f} GiB  "
      f"logprob fwd {r['logprob_forward']['tokens_per_s']:.0f} tok/s  "
      f"generate {g.get('new_tokens_per_s', 0):.0f} tok/s  attempts {r['attempts']}  ({sys.argv[3]} s)")
if "profile" in r:
    print("   profile:", {k: v for k, v in r["profile"]["share_by_class"].items() if v >= 0.01})
    for t in r["profile"]["top"][:4]:
        print(f"     {t['share']:.3f} {t['calls']:5d}x {t['name'][:90]}")
PY
  else
    echo "$name: FAILED rc=$rc ($((SECONDS - t0)) s); tail of suite.log:"
    tail -5 "$out/suite.log"
  fi
}

run mb8 "$@"
run mb8_fused --fused-adamw --gen-tokens 0 "$@"
run mb4_nockpt --micro-batch 4 --no-grad-ckpt --gen-tokens 0 "$@"
run s8k_mb4 --seq-len 8192 --micro-batch 4 --gen-tokens 0 "$@"
