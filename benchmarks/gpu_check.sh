#!/usr/bin/env bash
# The one device command for benchmarks/gpu_check.py on a CUDA machine with no network: install the carried
# wheels (.whl/: transformers and peft at the project's pins, liger-kernel, pydantic and the few packages
# they need that the machine may lack or hold too old) into /tmp/site, then run the check within the budget.
#   bash benchmarks/gpu_check.sh [BUDGET_S [gpu_check options]]     (writes $OUT/gpu_check.json, gpu_check.log, gpu_check_cases.log)
set -o pipefail
OUT=${OUT:-/tmp/gpu-check-out}
BUDGET=${1:-400}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv 2>&1 | tee "$OUT/gpu_check.log"
timeout $((BUDGET + 60)) python3 -m benchmarks.gpu_check --out "$OUT" --budget-s "$BUDGET" --work /tmp/gpu-check-work "${@:2}" \
  2>&1 | tee -a "$OUT/gpu_check.log"
rc=$?
# each case's own output (the tail of a failure is in gpu_check.json too)
for f in /tmp/gpu-check-work/*.log; do [ -f "$f" ] && { echo "=== $f"; tail -n 60 "$f"; }; done > "$OUT/gpu_check_cases.log" 2>&1
exit $rc
