#!/usr/bin/env bash
# The GPU check: npgru's GPU tests, then the training-step benchmark with npgru on CuPy beside
# PyTorch nn.GRU (cuDNN) and the seed's scratch GRU on cuda, then a short run of the example
# on CuPy. For a machine with an NVIDIA GPU whose image already has CuPy, PyTorch and pytest:
# it installs nothing and reaches no network.
#
# Usage (from anywhere):   OUT=/some/dir benchmarks/gpu_check.sh
#   OUT     where the logs go (default ./gpu_check_out): env.txt, pytest_gpu.log,
#           bench_gpu.log, bench_gpu.json, example_gpu.log
#   SIZES   benchmark sizes (default d2l,large,long)
#   DATA    timemachine.txt for the example (default: the first of ../shared/data/ and
#           shared/data/ that has it; ../shared does not travel to a lent device machine, so
#           copy the file into an ignored folder of the checkout, carry it, and name it here;
#           without it the example is skipped)
#   DRY=1   a dry run on the CPU (numpy backend, --quick) to test this script without a GPU
#
# Each phase has its own time limit, so that one hang cannot use up the machine; the whole
# script takes about 3–5 minutes on one H100 once the machine is up. The short table of the
# benchmark is printed last.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
SIZES="${SIZES:-d2l,large,long}"
PY="${PYTHON:-python}"
if [ -n "${DRY:-}" ]; then
    BACKEND=numpy
    BENCH_EXTRA=(--quick --sizes d2l)
else
    BACKEND=cupy
    BENCH_EXTRA=(--sizes "$SIZES" --procs 1 --rounds 6 --block 0.3)
fi

echo "== environment" | tee "$OUT/env.txt"
{
    date -u '+%Y-%m-%d %H:%M UTC'
    git describe --always --dirty 2>/dev/null || true
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

echo "== pytest -m gpu"
timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
rc_test=${PIPESTATUS[0]}
[ "$rc_test" = 5 ] && echo "(no gpu-marked test ran: none collected, or all skipped at import)" | tee -a "$OUT/pytest_gpu.log"

echo "== benchmark: npgru on $BACKEND beside torch"
timeout 330 "$PY" benchmarks/bench.py --backend "$BACKEND" "${BENCH_EXTRA[@]}" \
    --worker-timeout 300 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
rc_bench=${PIPESTATUS[0]}

rc_example=skipped
if [ -z "${DATA:-}" ]; then
    for candidate in ../shared/data/timemachine.txt shared/data/timemachine.txt; do
        if [ -f "$candidate" ]; then DATA="$candidate"; break; fi
    done
fi
if [ ! -f examples/timemachine.py ]; then
    echo "(examples/timemachine.py missing: example skipped)"
elif [ -z "${DATA:-}" ] || [ ! -f "$DATA" ]; then
    echo "(no timemachine.txt found, set DATA: example skipped)"
else
    echo "== example: 30 epochs on $BACKEND"
    timeout 120 "$PY" examples/timemachine.py --backend "$BACKEND" --epochs 30 \
        --data "$DATA" >"$OUT/example_gpu.log" 2>&1
    rc_example=$?
    tr '\r' '\n' <"$OUT/example_gpu.log" | grep -E '^(epoch|perplexity|\(perplexity)|Error|error' |
        tail -6
fi

echo
echo "== summary (logs in $OUT)"
echo "pytest -m gpu: exit $rc_test; $(grep -E '(passed|failed|skipped|error|deselected|no tests ran)' \
    "$OUT/pytest_gpu.log" | tail -1)"
echo "example: exit $rc_example; $(grep -E 'tokens/sec on' "$OUT/example_gpu.log" 2>/dev/null |
    tail -1)"
echo "benchmark: exit $rc_bench"
# the benchmark's own short table: its header line to the end
awk '/^size +npgru tok\/s/ { on = 1 } on' "$OUT/bench_gpu.log"
[ "$rc_test" = 0 ] || [ "$rc_test" = 5 ] || exit 1
[ "$rc_bench" = 0 ] || exit 1
