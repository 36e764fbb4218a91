#!/usr/bin/env bash
# The release as a user gets it: build the sdist and the wheel from the checkout's files,
# `twine check` them, install the wheel into a fresh virtualenv outside the source tree (only
# the package registry is reached, for numpy and tqdm), and run the `npgru` command there on
# the copy of the book that ships with the tests.
#
# Usage:  .ci/wheel_smoke.sh            (from anywhere; .ci/run calls it after the tests)
# Env:    PYTHON=python3                (the Python that builds, with `build` and `twine`;
#                                        default: python)
#         KEEP=1                        (keep the temp folder and print where it is)
#
# The checkout's files are those git does not ignore (tracked or not), copied first: a build
# folder, an egg-info or __pycache__ left by the tests never reaches the sdist.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/npgru-wheel.XXXXXX")"
if [ -n "${KEEP:-}" ]; then
    echo "wheel_smoke: keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
# the installed command must find nothing of the checkout: no PYTHONPATH, no source folder
unset PYTHONPATH PYTHONHOME
step() { printf '\n--- wheel_smoke: %s\n' "$*"; }
fail() {
    echo "wheel_smoke: FAILED: $*" >&2
    exit 1
}

step "the checkout's files into $WORK/src"
mkdir "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        tar --null --files-from=- --ignore-failed-read -cf -) | tar -xf - -C "$WORK/src"
else # an unpacked sdist: its files are the release's
    cp -a "$ROOT/." "$WORK/src"
fi

step "python -m build (sdist, then the wheel from the sdist)"
"$PY" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 ||
    { tail -30 "$WORK/build.log" >&2; fail "python -m build (log above)"; }
sdist=("$WORK"/dist/npgru-*.tar.gz)
wheel=("$WORK"/dist/npgru-*-py3-none-any.whl)
[ -f "${sdist[0]}" ] && [ -f "${wheel[0]}" ] || fail "no sdist or no pure-Python wheel in dist/"
ls -l "$WORK/dist"
"$PY" -m twine check --strict "$WORK"/dist/*

step "the wheel's and the sdist's files"
"$PY" - "${wheel[0]}" "${sdist[0]}" "$WORK/src" <<'EOF'
import pathlib, sys, tarfile, zipfile

wheel, sdist, src = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
in_wheel = set(zipfile.ZipFile(wheel).namelist())
package = {p.relative_to(src).as_posix() for p in (src / "npgru").rglob("*") if p.is_file()}
package = {p for p in package if "__pycache__" not in p}
missing = sorted(package - in_wheel)
assert not missing, f"the wheel lacks {missing}"
assert "npgru/kernels/gru.cu" in in_wheel, "the wheel lacks the CUDA source"
stray = sorted(p for p in in_wheel if not p.startswith(("npgru/", "npgru-")))
assert not stray, f"the wheel holds files outside the package: {stray[:5]}"
with tarfile.open(sdist) as tar:
    in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
need = ["LICENSE", "README.md", "CHANGELOG.md", "npgru/kernels/gru.cu",
        "tests/data/timemachine.txt", "tests/emulator/cuda_emulator.h",
        "examples/timemachine.ipynb", "docs/derivation.md", "benchmarks/memory.sh"]
missing = [name for name in need if name not in in_sdist]
assert not missing, f"the sdist lacks {missing}"
assert not [n for n in in_sdist if "__pycache__" in n], "the sdist holds __pycache__"
print(f"wheel: {len(in_wheel)} files, sdist: {len(in_sdist)} entries")
EOF

step "a fresh virtualenv in $WORK/venv, the wheel installed"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check "${wheel[0]}"
mkdir "$WORK/run"
cd "$WORK/run" # outside the source tree: only the installed package can be imported
cp "$ROOT/tests/data/timemachine.txt" book.txt
"$VPY" - "$ROOT" <<'EOF'
import importlib.metadata, importlib.resources, pathlib, sys
import npgru

where = pathlib.Path(npgru.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in where.parents, f"npgru imported from {where}"
assert pathlib.Path(sys.argv[1]).resolve() not in where.parents, f"the checkout's {where}"
assert importlib.resources.files("npgru").joinpath("kernels", "gru.cu").is_file()
assert importlib.metadata.version("npgru") == npgru.__version__, "two version numbers"
print(f"npgru {npgru.__version__} from {where.parent}")
EOF
export PATH="$WORK/venv/bin:$PATH" # `npgru` is the virtualenv's console script
[ "$(command -v npgru)" = "$WORK/venv/bin/npgru" ] || fail "no npgru command in the virtualenv"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NPGRU_DATA_DIR="$WORK/cache"

step "npgru --help"
npgru --help | tee help.txt
grep -q "train" help.txt && grep -q "generate" help.txt && grep -q "info" help.txt ||
    fail "npgru --help does not name train, generate and info"

step "npgru train --data book.txt --epochs 2 --num-hiddens 32 --save run.npz"
npgru train --data book.txt --epochs 2 --num-hiddens 32 --save run.npz
"$VPY" -c 'import sys, zipfile; sys.exit(not zipfile.is_zipfile("run.npz"))' ||
    fail "train wrote no run.npz"

step 'npgru generate run.npz --prefix "The Time Traveller"'
npgru generate run.npz --prefix "The Time Traveller" | tee generated.txt
# the prefix (in the vocabulary's lower case) and at least one character after it
grep -qi "time traveller." generated.txt || fail "generate printed no text after the prefix"

step "npgru info run.npz"
npgru info run.npz | tee info.txt
grep -qi "format" info.txt || fail "info does not name the checkpoint's format"
grep -q "32" info.txt || fail "info does not give the 32 hidden units"

step "python -m npgru --version"
version="$("$VPY" -m npgru --version)"
echo "$version"
want="$("$VPY" -c 'import importlib.metadata as m; print(m.version("npgru"))')"
[[ "$version" == *"$want"* ]] || fail "--version says '$version', the wheel is $want"
[ ! -e "$WORK/cache" ] || fail "a run with --data made the download cache $WORK/cache"

printf '\nwheel_smoke: passed (npgru %s: build, twine check, install, 5 commands)\n' "$want"
