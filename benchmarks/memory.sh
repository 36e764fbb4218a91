#!/usr/bin/env bash
# Peak memory (maximum resident set size of the whole process) of a full training run:
# npgru's examples/timemachine.py beside PyTorch's benchmarks/torch_timemachine.py
# (nn.GRU + nn.Linear, and the seed's from-scratch gru), one run each, d2l's settings.
#
# Usage:  benchmarks/memory.sh [EPOCHS]        (default 500; run from anywhere)
#         benchmarks/memory.sh --help          (this text)
# Env:    DATA=path/to/timemachine.txt  (default tests/data/timemachine.txt)
#         THREADS=2                     (BLAS/OpenMP/torch threads for every run)
#         LOG_DIR=dir                   (where each run's output goes; default a temp dir)
#         SKIP_SCRATCH=1                (leave the from-scratch PyTorch run out)
#
# Measured with `/usr/bin/time -v` ("Maximum resident set size"); where that is missing, a
# Python wrapper reads resource.getrusage(RUSAGE_CHILDREN).ru_maxrss (the same number).
set -euo pipefail

# the comment block above, without its "# ", is the --help
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }
case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
-*)
    echo "memory.sh: unknown option $1 (usage: benchmarks/memory.sh [EPOCHS]; --help)" >&2
    exit 2
    ;;
esac
if [ $# -gt 1 ] || ! [[ "${1:-500}" =~ ^[1-9][0-9]*$ ]]; then
    echo "memory.sh: expected at most one argument, EPOCHS, a positive integer; got: $*" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
EPOCHS="${1:-500}"
DATA="${DATA:-tests/data/timemachine.txt}"
THREADS="${THREADS:-2}"
LOG_DIR="${LOG_DIR:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
PY="${PYTHON:-python}"

# peak_rss NAME CMD... : run CMD, print "NAME <max RSS in MiB> <wall s>"; output in LOG_DIR
peak_rss() {
    local name="$1"
    shift
    local out="$LOG_DIR/$name.out" report="$LOG_DIR/$name.time"
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -v "$@" >"$out" 2>"$report" || {
            echo "$name: failed, see $out and $report" >&2
            tail -5 "$report" >&2
            return 1
        }
        kb=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$report")
        wall=$(sed -n 's/^[[:space:]]*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$report")
    else
        read -r kb wall < <("$PY" - "$out" "$report" "$@" <<'EOF'
import resource, subprocess, sys, time
out, report, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.perf_counter()
with open(out, "w") as o, open(report, "w") as e:
    rc = subprocess.run(cmd, stdout=o, stderr=e).returncode
if rc:
    sys.exit(rc)
# ru_maxrss: kilobytes on Linux, the largest of the waited-for children
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, f"{time.perf_counter() - t0:.0f}s")
EOF
        ) || { echo "$name: failed, see $out and $report" >&2; return 1; }
    fi
    summary=$(grep -E "tokens/sec on" "$out" | tail -1 || true)
    awk -v n="$name" -v kb="$kb" -v w="$wall" -v s="$summary" \
        'BEGIN { printf "%-16s %9.1f MiB   wall %-9s %s\n", n, kb / 1024, w, s }'
}

echo "peak memory of a $EPOCHS-epoch run, $THREADS threads, data $DATA (logs in $LOG_DIR)"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git describe --always --dirty 2>/dev/null || echo '?')"
lines=()
if [ -f examples/timemachine.py ]; then
    args=(--data "$DATA")
    [ "$EPOCHS" = 500 ] || args+=(--epochs "$EPOCHS")
    lines+=("$(peak_rss npgru "$PY" examples/timemachine.py "${args[@]}")")
    echo "${lines[-1]}"
else
    echo "npgru: examples/timemachine.py does not exist yet; left out" >&2
fi
torch_args=(--epochs "$EPOCHS" --threads "$THREADS" --data "$DATA" --quiet)
lines+=("$(peak_rss torch-nn.GRU "$PY" benchmarks/torch_timemachine.py "${torch_args[@]}")")
echo "${lines[-1]}"
if [ -z "${SKIP_SCRATCH:-}" ]; then
    lines+=("$(peak_rss torch-scratch "$PY" benchmarks/torch_timemachine.py --scratch \
        "${torch_args[@]}")")
    echo "${lines[-1]}"
fi
echo
printf '%-16s %13s\n' run "max RSS"
for line in "${lines[@]}"; do
    awk '{ printf "%-16s %9s MiB\n", $1, $2 }' <<<"$line"
done
