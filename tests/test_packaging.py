"""The release: what setup.cfg, MANIFEST.in, the CHANGELOG and CI declare, in milliseconds; and
one slow test that builds the sdist and the wheel offline (``python -m build --no-isolation``,
a few seconds) and lists what they hold. CI also installs the wheel and runs the command
outside the source tree (``.ci/wheel_smoke.sh``, called by ``.ci/run``)."""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

import npgru

ROOT = Path(__file__).resolve().parents[1]
#: what the sdist carries beside the package: everything to test and read it
SDIST_FOLDERS = ("tests", "docs", "examples", "benchmarks")


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def requirements(text: str) -> list[str]:
    """The distribution names of a setup.cfg list (comments, versions and extras dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() for line in lines if line]


def test_one_version_number():
    cfg = setup_cfg()
    assert cfg["metadata"]["version"] == "attr: npgru.version.__version__"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.MULTILINE)
    assert releases[0] == npgru.__version__, "the CHANGELOG's newest entry is this version"
    assert releases[-1] == "0.1.0" and len(set(releases)) == len(releases)


def test_extras_and_runtime_dependencies():
    cfg = setup_cfg()
    assert requirements(cfg["options"]["install_requires"]) == ["numpy", "tqdm"]
    extras = {name: requirements(text) for name, text in cfg["options.extras_require"].items()}
    notebook = set(extras["notebook"])
    assert notebook & {"jupyterlab", "notebook"} and {"matplotlib", "ipykernel"} <= notebook
    assert {"build", "twine", "mypy"} <= set(extras["dev"])
    assert extras["onnx"] == ["onnx", "onnxruntime"]  # npgru.interop.to_onnx, npgru export
    # the test extra runs the notebook and the slow build below
    assert {"pytest", "nbclient", "ipykernel", "build", "setuptools"} <= set(extras["test"])


def test_the_wheel_declares_the_cuda_source():
    patterns = setup_cfg()["options.package_data"]["npgru"].split()
    kernels = sorted(p.relative_to(ROOT / "npgru") for p in (ROOT / "npgru").rglob("*.cu"))
    assert kernels, "npgru/kernels/*.cu"
    for kernel in kernels:
        assert any(kernel.match(pattern) for pattern in patterns), f"{kernel} not in package_data"


def test_the_manifest_names_what_the_sdist_needs():
    rules = [
        line.split()
        for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    included = {name for rule in rules if rule[0] == "include" for name in rule[1:]}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "mkdocs.yml"} <= included
    assert all((ROOT / name).is_file() for name in included if "*" not in name)
    grafted = {rule[1] for rule in rules if rule[0] == "graft"}
    assert set(SDIST_FOLDERS) <= grafted
    assert ["recursive-include", "npgru", "*.py", "*.cu"] in rules
    assert not [rule for rule in rules if rule[0] == "prune" and rule[1] in SDIST_FOLDERS]


def test_mypy_checks_the_package():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mypy = config["tool"]["mypy"]
    assert mypy["files"] == ["npgru"] and mypy["check_untyped_defs"] is True
    skipped = {m for o in mypy["overrides"] for m in o["module"] if o.get("follow_imports")}
    assert {"cupy", "torch", "tqdm", "matplotlib"} <= skipped  # same result with or without


def test_ci_runs_the_release_checks():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tests = run.index("python -m pytest")
    assert run.index('-e ".[onnx]"') < tests  # tests/test_onnx.py runs the exported graphs
    assert tests < run.index("\nmypy") and tests < run.index(".ci/wheel_smoke.sh")
    smoke = ROOT / ".ci" / "wheel_smoke.sh"
    subprocess.run(["bash", "-n", str(smoke)], check=True)  # it parses
    script = smoke.read_text(encoding="utf-8")
    for command in (
        "-m build",
        "twine check",
        "-m venv",
        "npgru --help",
        "npgru train --data book.txt --epochs 2 --num-hiddens 32 --save run.npz",
        'npgru generate run.npz --prefix "The Time Traveller"',
        "npgru info run.npz",
        '-m npgru --version"',
    ):
        assert command in script, command


def memory_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "memory.sh"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_memory_sh_help_and_bad_arguments():
    r = memory_sh("--help")
    assert r.returncode == 0 and r.stderr == ""
    assert "Usage:  benchmarks/memory.sh [EPOCHS]" in r.stdout and "SKIP_SCRATCH=1" in r.stdout
    assert "set -euo" not in r.stdout and "\n#" not in r.stdout  # the comment, not the code
    assert memory_sh("-h").stdout == r.stdout
    for args, says in (
        (["--epochs", "3"], "unknown option --epochs"),
        (["ten"], "EPOCHS, a positive integer"),
        (["3", "4"], "at most one argument"),
    ):
        r = memory_sh(*args)
        assert r.returncode == 2 and r.stdout == "", args
        assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def source_files(root: Path) -> list[str]:
    """The files of the checkout a release is built from: those git does not ignore, else
    (an unpacked sdist) every file but caches."""
    if shutil.which("git") and (root / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
        return sorted(name for name in listed if name and (root / name).is_file())
    caches = ("__pycache__", ".egg-info", ".pytest_cache", ".hypothesis", ".venv", "build", "dist")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.endswith(caches) for part in p.relative_to(root).parts)
    )


@pytest.mark.slow
def test_the_sdist_and_the_wheel_hold_what_a_user_runs(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("`build` is not installed: pip install -e '.[test]'")
    import setuptools

    if tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2]) < (70, 1):
        pytest.skip(f"setuptools {setuptools.__version__} needs `wheel`: pip install -e '.[test]'")
    src = tmp_path / "src"
    files = source_files(ROOT)
    for name in files:  # a copy: the build's egg-info and build/ stay out of the checkout
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    # offline: this environment's setuptools, no isolated one from the registry
    r = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (sdist,) = tmp_path.glob(f"npgru-{npgru.__version__}.tar.gz")
    (wheel,) = tmp_path.glob(f"npgru-{npgru.__version__}-py3-none-any.whl")

    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
        meta = HeaderParser().parsestr(
            zf.read(f"npgru-{npgru.__version__}.dist-info/METADATA").decode()
        )
    package = {name for name in files if name.startswith("npgru/")}
    assert package <= in_wheel, sorted(package - in_wheel)
    assert "npgru/kernels/gru.cu" in in_wheel
    assert not [n for n in in_wheel if not n.startswith(("npgru/", "npgru-"))]
    assert meta["Version"] == npgru.__version__
    runtime = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert sorted(requirements("\n".join(runtime))) == ["numpy", "tqdm"]
    assert {"notebook", "dev", "test", "cuda12"} <= set(meta.get_all("Provides-Extra") or [])

    with tarfile.open(sdist) as tar:
        prefix = f"npgru-{npgru.__version__}/"
        in_sdist = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
    wanted = {"LICENSE", "README.md", "CHANGELOG.md", "setup.cfg", "pyproject.toml", "mkdocs.yml"}
    wanted |= package | {n for n in files if n.startswith(tuple(f + "/" for f in SDIST_FOLDERS))}
    assert wanted <= in_sdist, sorted(wanted - in_sdist)
    for needed in ("tests/data/timemachine.txt", "tests/emulator/cuda_emulator.h"):
        assert needed in in_sdist
    assert not [n for n in in_sdist if "__pycache__" in n or n.endswith(".pyc")]
