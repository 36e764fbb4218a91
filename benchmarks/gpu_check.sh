#!/usr/bin/env bash
# The GPU check, one script for a machine with an NVIDIA GPU whose image already has CuPy,
# PyTorch and pytest (it installs nothing and reaches no network). What a claim needs first,
# the diagnostics after, so that a run cut short still has the evidence:
#   1. the GPU tests (pytest -m gpu): the CUDA path equals the reference, finite differences;
#   2. the training-step benchmark, npgru's CUDA path beside PyTorch nn.GRU (cuDNN) and the
#      seed's scratch GRU on cuda, at the d2l, large and long sizes;
#   3. the d2l run end to end (500 epochs, d2l defaults) with examples/timemachine.py
#      --backend cupy beside benchmarks/torch_timemachine.py --device cuda, wall times;
#   4. where the GPU time goes (benchmarks/cuda_kernels.py); npgru's reference path on CuPy
#      at d2l size, for the before/after; each BASELINE tree's npgru beside nn.GRU;
#   5. the summary table, last.
#
# Usage (from anywhere):   OUT=/some/dir DATA=path/to/timemachine.txt benchmarks/gpu_check.sh
#   OUT     where the logs go (default ./gpu_check_out)
#   SIZES   benchmark sizes (default d2l,large,long)
#   EPOCHS  epochs of the end-to-end runs (default 500, d2l's)
#   DATA    timemachine.txt for phase 3 (default: tests/data/timemachine.txt, which ships
#           with the tests); without it phase 3 is skipped
#   BASELINE  trees of other revisions, space-separated (e.g. the last measured one:
#           `git archive REV | tar -x -C .baseline/REV`, in a folder that travels): phase 4c
#           runs each tree's own bench.py (d2l size, npgru beside nn.GRU) and cuda_kernels.py
#           with its own package, in the same session, and the summary puts their d2l
#           ratio beside the current one
#   NPGRU_COMMIT  the commit this tree is, for the logs (default: git describe; on a machine
#           the tree was copied to, git's own metadata may be that of an older commit)
#   BUDGET  seconds the whole script may take (default 360): a phase starts only if its
#           minimum is left and is stopped when the budget is spent, so the summary comes
#           even from a run cut short, naming the phases skipped; set it below the limit
#           of whatever runs the script
#   DRY=1   a dry run on the CPU (numpy backend, reference path, tiny) to test this script
#
# Each phase also has its own time limit, so that one hang cannot use up the machine; on
# one H200 the whole script took about 3 minutes once the machine was up (at 5f74805,
# before phase 4a timed whole training steps too).
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
SIZES="${SIZES:-d2l,large,long}"
EPOCHS="${EPOCHS:-500}"
BUDGET="${BUDGET:-360}"
PY="${PYTHON:-python3}"
if [ -n "${DRY:-}" ]; then
    BACKEND=numpy DEVICE=cpu IMPL=reference EPOCHS=3
    BENCH=(--quick --sizes d2l)
    BENCH_REF=(--quick --sizes d2l --contenders npgru)
    BENCH_BASE=("${BENCH_REF[@]}")
else
    BACKEND=cupy DEVICE=cuda IMPL=cuda
    BENCH=(--sizes "$SIZES" --procs 2 --rounds 6 --block 0.3)  # two processes: a spread
    BENCH_REF=(--sizes d2l --procs 1 --rounds 3 --block 0.3 --contenders npgru,nn.GRU)
    BENCH_BASE=(--sizes d2l --procs 1 --rounds 6 --block 0.3 --contenders npgru,nn.GRU)
fi

echo "== environment" | tee "$OUT/env.txt"
{
    date -u '+%Y-%m-%d %H:%M UTC'
    echo "commit ${NPGRU_COMMIT:-$(git describe --always --dirty 2>/dev/null)}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import platform
print("python", platform.python_version())
for mod in ("numpy", "cupy", "torch"):
    try:
        m = __import__(mod)
        print(mod, m.__version__)
    except Exception as exc:  # report, do not stop: the phases below say what fails
        print(mod, "unavailable:", exc)
try:
    import torch
    print("torch.cuda.is_available()", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    print("cudnn", torch.backends.cudnn.version())
except Exception as exc:
    print("torch cuda query failed:", exc)
EOF
} 2>&1 | tee -a "$OUT/env.txt"

# the budget: a phase starts only with at least its minimum left, and stops at its own
# limit or when the budget is spent, whichever comes first
budget_end=$((SECONDS + BUDGET))
limit() {  # seconds the next command may take: at most $1, at most what is left (minus 10 s)
    local left=$((budget_end - SECONDS - 10))
    left=$((left < 1 ? 1 : left))  # timeout needs a positive limit
    echo $(($1 < left ? $1 : left))
}
fits() {  # true if at least $1 s are left; otherwise say which phase is skipped
    [ "$(limit 100000)" -ge "$1" ] && return 0
    echo "($2 skipped: $((budget_end - SECONDS)) s of BUDGET=$BUDGET left)"
    return 1
}

echo "== 1. pytest -m gpu"
rc_test=skipped
if fits 60 "phase 1"; then
    timeout "$(limit 240)" "$PY" -m pytest -m gpu -q -p no:cacheprovider 2>&1 |
        tee "$OUT/pytest_gpu.log" | grep -E '^(FAILED|ERROR|E  )|passed|failed' |
        cut -c1-220 | tail -30
    rc_test=${PIPESTATUS[0]}
fi

echo "== 2. benchmark: npgru ($IMPL) on $BACKEND beside torch on $DEVICE"
rc_bench=skipped
if fits 60 "phase 2"; then
    t=$(limit 300)
    timeout "$t" "$PY" benchmarks/bench.py --backend "$BACKEND" --impl "$IMPL" "${BENCH[@]}" \
        --worker-timeout $(((t - 10) / 2)) --json "$OUT/bench_gpu.json" >"$OUT/bench_gpu.log" 2>&1
    rc_bench=$?
    tail -25 "$OUT/bench_gpu.log"
fi

if [ -z "${DATA:-}" ]; then
    for candidate in tests/data/timemachine.txt; do
        if [ -f "$candidate" ]; then DATA="$candidate"; break; fi
    done
fi
npgru_s=skipped torch_s=skipped
if [ -z "${DATA:-}" ] || [ ! -f "$DATA" ]; then
    echo "(no timemachine.txt found, set DATA: phase 3 skipped)"
elif fits 60 "phase 3"; then
    echo "== 3. end to end: $EPOCHS epochs, npgru on $BACKEND ($IMPL) then torch nn.GRU on $DEVICE"
    t0=$EPOCHREALTIME
    timeout "$(limit 150)" "$PY" examples/timemachine.py --backend "$BACKEND" --impl "$IMPL" \
        --epochs "$EPOCHS" --data "$DATA" >"$OUT/example_gpu.log" 2>&1
    rc_example=$?
    npgru_s=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }")
    [ "$rc_example" = 0 ] || npgru_s="failed (exit $rc_example)"
    tr '\r' '\n' <"$OUT/example_gpu.log" | grep -E '^(perplexity|\(perplexity|time|travel)|rror' |
        tail -5
    t0=$EPOCHREALTIME
    timeout "$(limit 150)" "$PY" benchmarks/torch_timemachine.py --device "$DEVICE" \
        --epochs "$EPOCHS" --data "$DATA" --quiet >"$OUT/torch_gpu.log" 2>&1
    rc_torch=$?
    torch_s=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }")
    [ "$rc_torch" = 0 ] || torch_s="failed (exit $rc_torch)"
    grep -E '^perplexity' "$OUT/torch_gpu.log" | tail -1
fi

echo "== 4a. where the GPU time goes: the kernels alone, and a training step synced and queued"
KERNELS=()
[ -n "${DRY:-}" ] && KERNELS=(--dry --sizes d2l --reps 2 --rounds 1)
if fits 40 "phase 4a"; then
    timeout "$(limit 150)" "$PY" benchmarks/cuda_kernels.py ${KERNELS[@]+"${KERNELS[@]}"} 2>&1 |
        tee "$OUT/kernels.log" | tail -24
fi

echo "== 4b. benchmark: npgru (reference) on $BACKEND, d2l size"
rc_ref=skipped
if fits 30 "phase 4b"; then
    t=$(limit 120)
    timeout "$t" "$PY" benchmarks/bench.py --backend "$BACKEND" --impl reference \
        "${BENCH_REF[@]}" --worker-timeout $((t - 10)) >"$OUT/bench_ref.log" 2>&1
    rc_ref=$?
fi
for tree in ${BASELINE:-}; do
    base=$(basename "$tree")
    echo "== 4c. baseline $base: its npgru beside nn.GRU at d2l size, then its kernel times"
    fits 60 "baseline $base" || continue
    BASE_KERNELS=()
    [ -n "${DRY:-}" ] && BASE_KERNELS=(--dry --sizes d2l --reps 2 --rounds 1)
    # the ratio first: it is what the summary compares
    t=$(limit 120)
    NPGRU_COMMIT="$base" PYTHONPATH="$tree" timeout "$t" "$PY" "$tree/benchmarks/bench.py" \
        --backend "$BACKEND" --impl "$IMPL" "${BENCH_BASE[@]}" --worker-timeout $((t - 10)) \
        >"$OUT/bench_$base.log" 2>&1 ||
        echo "(baseline $base: bench.py exit $?)"
    [ -f "$tree/benchmarks/cuda_kernels.py" ] && fits 30 "baseline $base kernels" &&
        PYTHONPATH="$tree" timeout "$(limit 100)" "$PY" "$tree/benchmarks/cuda_kernels.py" \
            ${BASE_KERNELS[@]+"${BASE_KERNELS[@]}"} >"$OUT/kernels_$base.log" 2>&1
    grep -E '^training step|rror' "$OUT/kernels_$base.log" 2>/dev/null
done

echo
echo "== summary (logs in $OUT)"
echo "pytest -m gpu: exit $rc_test; $(grep -E '(passed|failed|skipped|error|no tests ran)' \
    "$OUT/pytest_gpu.log" 2>/dev/null | tail -1)"
echo "reference path, d2l: $(grep -E '^d2l ' "$OUT/bench_ref.log" 2>/dev/null |
    head -1) (exit $rc_ref)"
echo "end to end, $EPOCHS epochs, wall seconds (process start to exit):"
echo "  npgru $npgru_s: $(grep -E '^perplexity' "$OUT/example_gpu.log" 2>/dev/null | tail -1)"
echo "  torch $torch_s: $(grep -E '^perplexity' "$OUT/torch_gpu.log" 2>/dev/null | tail -1)"
echo "where a step's time goes (benchmarks/cuda_kernels.py):"
grep -E '^training step|rror' "$OUT/kernels.log" 2>/dev/null | sed 's/^ */  /'
echo "benchmark: exit $rc_bench"
awk '/^size +npgru tok\/s/ { on = 1 } on' "$OUT/bench_gpu.log" 2>/dev/null
for tree in ${BASELINE:-}; do
    base=$(basename "$tree")
    echo "baseline $base, d2l, same session: $(grep -E '^d2l ' "$OUT/bench_$base.log" \
        2>/dev/null | head -1)"
    grep -E '^training step' "$OUT/kernels_$base.log" 2>/dev/null | sed 's/^/  /'
done
[ "$rc_test" = 0 ] || [ "$rc_test" = 5 ] || exit 1
[ "$rc_bench" = 0 ] || exit 1
