#!/usr/bin/env bash
# One prepared check for a machine with a CUDA GPU (about 5 minutes in all): the CUDA tests
# (pytest -m cuda: mixed precision, fused optimisers, batched heads) and the step benchmark on the
# GPU (benchmark/step_perf.py, capped at 170 s). Results go to $OUT (default: results/gpu_check/):
# env.txt, pytest.txt, perf_step.md, perf_step.json, perf_step.err. Record them in the README's "GPU results" section with the date and commit.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu_check}"
mkdir -p "$OUT"
status=0
{
    date -u +%Y-%m-%dT%H:%MZ
    git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
    python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
} >"$OUT/env.txt" 2>&1 || status=1
timeout 120 python -m pytest -m cuda -q -p no:cacheprovider -rs tests >"$OUT/pytest.txt" 2>&1 || status=1
timeout 170 python run_all.py perf --step --device cuda --methods ew graddrop mgda upgrad --trunks mlp cnn \
    --tasks-counts 10 40 --rounds 3 --repeats 3 --variant factored_heads=true,batched_heads=true,optimizer_impl=fused \
    --variant factored_heads=true,amp=bf16 --json "$OUT/perf_step.json" --output "$OUT/perf_step.md" \
    2>"$OUT/perf_step.err" || status=1
tail -n 3 "$OUT/pytest.txt"
echo "gpu_check: exit $status; results in $OUT"
exit "$status"
