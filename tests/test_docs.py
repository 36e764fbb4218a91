"""The docs run, cite what exists, and agree with the code.

1. Every ```python block of ``docs/*.md`` and ``README.md`` runs: the blocks of one file in
   order, in one namespace, from the repository root; each such file asserts something.
2. Every dotted name ``npgru.x.y`` in the docs resolves, and each numbered equation of
   ``docs/derivation.md`` cites code whose source refers back to that equation number.
3. The worked example's numbers (the tables of ``docs/derivation.md``, section 6) equal what
   ``npgru.gru.step_forward`` and ``npgru.gru.step_backward`` compute, to the 6 significant
   digits written. The numbers are read from the markdown, not repeated here.
4. ``docs/make_figures.py`` runs and writes the figure that is committed.
5. The docs site (``mkdocs.yml``, read without MkDocs): every page of ``docs/`` is in the nav,
   links stay inside ``docs/``, each public module has its API page, and CI builds the site
   with ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npgru

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DERIVATION = DOCS / "derivation.md"
MARKDOWN = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
# The pages whose every npgru.* name must resolve and whose math is linted (the other pages
# may name modules still to come, or use $ for other things).
CITING = [DOCS / name for name in ("derivation.md", "backends.md", "exercise.md", "index.md",
                                   "gradient-flow.md")]  # fmt: skip

FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
DOTTED = re.compile(r"(?<![\w.])npgru(?:\.[A-Za-z_]\w*)+")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(text: str, language: str = "python") -> list[tuple[int, str]]:
    """(line number of the first code line, dedented source) of each fenced block."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(2) == language:
            blocks.append((text.count("\n", 0, m.start(3)), textwrap.dedent(m.group(3))))
    return blocks


def run_blocks(path: Path) -> dict[str, Any]:
    """Execute the python blocks of ``path`` in order in one namespace; return it."""
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    for line, source in code_blocks(read(path)):
        # pad with newlines so that a traceback points at the line in the .md file
        exec(compile("\n" * line + source, str(path), "exec"), namespace)
    return namespace


def resolve(dotted: str) -> Any:
    """The object a dotted name refers to: the longest importable prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
                raise  # a real module that fails to import
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


#: What a module of npgru may need that a plain install lacks (the extras).
OPTIONAL = {"numba", "cupy", "cupyx", "cupy_backends", "onnx", "onnxruntime", "torch", "matplotlib"}


def exists(dotted: str) -> None:
    """Raise unless ``dotted`` names something: :func:`resolve`, or, for a module of npgru
    that imports an extra which is not installed (``npgru.fused`` without Numba), a name
    defined at the top of that module's source."""
    try:
        resolve(dotted)
        return
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL:
            raise
    parts = dotted.split(".")
    source = ROOT / "npgru" / f"{parts[1]}.py"
    if not source.is_file():
        raise ModuleNotFoundError(dotted)
    tree = ast.parse(source.read_text(encoding="utf-8"))
    top = {node.name for node in tree.body if hasattr(node, "name")}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        top.update(t.id for t in targets if isinstance(t, ast.Name))
    if len(parts) > 2 and parts[2] not in top:
        raise AttributeError(f"{'.'.join(parts[:2])} has no {parts[2]!r}")


# --------------------------------------------------------------------------------------
# 1. every python block runs and asserts


@pytest.mark.parametrize(
    "path", [p for p in MARKDOWN if code_blocks(read(p))], ids=lambda p: p.name
)
def test_python_blocks_run(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [source for _, source in code_blocks(read(path))]
    asserts = sum(
        isinstance(node, ast.Assert) for source in sources for node in ast.walk(ast.parse(source))
    )
    assert asserts, f"{path.name}: its python blocks must assert something"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_blocks(path)


def test_the_main_pages_have_code_that_runs() -> None:
    for name in ("derivation.md", "exercise.md", "backends.md", "index.md"):
        assert code_blocks(read(DOCS / name)), f"docs/{name} has no python block"


@pytest.mark.parametrize("path", CITING, ids=lambda p: p.name)
def test_inline_math_is_balanced(path: Path) -> None:
    """GitHub renders $...$ only within one line: each line has an even number of $."""
    text = FENCE.sub("", read(path))
    display = False
    for line in text.splitlines():
        if line.strip() == "$$":
            display = not display
            continue
        prose = re.sub(r"`[^`]*`", "", line).replace("$$", "")
        if not display and len(re.findall(r"(?<!\\)\$", prose)) % 2:
            pytest.fail(f"{path.name}: unbalanced $ in {line!r}")
    assert not display, f"{path.name}: a $$ block is not closed"


def test_images_exist() -> None:
    for path in MARKDOWN:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", read(path)):
            assert (path.parent / target).is_file(), f"{path.name}: missing image {target}"


# --------------------------------------------------------------------------------------
# 2. cited names exist, and the code points back at the equations


@pytest.mark.parametrize("path", CITING, ids=lambda p: p.name)
def test_cited_names_resolve(path: Path) -> None:
    names = sorted(set(DOTTED.findall(read(path))))
    missing = []
    for name in names:
        try:
            exists(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name} ({exc})")
    assert not missing, f"{path.name} cites names npgru does not have: {missing}"
    if path == DERIVATION:
        assert len(names) >= 10


def numbered_equations(text: str) -> list[tuple[str, str, str]]:
    """(tag, equation, the line after it) for each $$ block ending in a tag like (5)."""
    text = FENCE.sub("", text)
    found = []
    for m in re.finditer(r"^\$\$\n(.*?)\n\$\$\n", text, re.S | re.M):
        tag = re.search(r"\((\d+'?)\)\s*$", m.group(1))
        if tag:
            after = text[m.end() :].lstrip("\n").split("\n", 1)[0]
            found.append((tag.group(1), m.group(1), after))
    return found


def equation_refs(source: str) -> set[str]:
    """Equation numbers that code text refers to: 'eq. 7', 'eqs. 5, 7', 'eqs. (5)–(12)', '3''."""
    refs = set()
    for m in re.finditer(r"\beqs?\.\s*((?:[\d()',–\- ]|\band\b|\bor\b)+)", source):
        chunk = m.group(1)
        for lo, hi in re.findall(r"(\d+)\)?\s*[–-]\s*\(?(\d+)", chunk):
            refs.update(str(n) for n in range(int(lo), int(hi) + 1))
        refs.update(re.findall(r"\d+'?", chunk))
    return refs


def test_every_equation_names_its_code_and_the_code_points_back() -> None:
    equations = numbered_equations(read(DERIVATION))
    tags = [tag for tag, _, _ in equations]
    expected = [str(n) for n in range(1, 29)] + ["3'", "9'", "10'", "11'", "12'"]
    assert sorted(tags) == sorted(expected), "derivation.md must number eqs. 1-28, 3', 9'-12' once"
    for tag, _, after in equations:
        assert after.startswith("Code:"), f"eq. ({tag}) is not followed by a 'Code:' line"
        cited = DOTTED.findall(after)
        variables = [v for v in re.findall(r"`([^`]+)`", after) if not DOTTED.fullmatch(v)]
        assert cited and variables, f"eq. ({tag}) must name a function and a variable"
        for name in cited:
            obj = resolve(name)
            if not callable(obj):
                continue
            module = sys.modules[obj.__module__]
            refs = equation_refs(inspect.getsource(obj) + (module.__doc__ or ""))
            assert tag in refs, f"{name} (cited for eq. ({tag})) does not mention eq. {tag}"


def test_equation_refs_parser() -> None:
    assert equation_refs("eqs. (5)–(12) of") == {str(n) for n in range(5, 13)}
    assert equation_refs("# eq. 3 (or 3')") == {"3", "3'"}
    assert equation_refs("# eqs. 1, 2 side by side; eq. 11, the") == {"1", "2", "11"}


# --------------------------------------------------------------------------------------
# 3. the worked example agrees with the code


def locals_on_return(func: Any, *args: Any) -> tuple[Any, dict[str, Any]]:
    """Call ``func`` and return its result and its local variables as it returns."""
    captured: dict[str, Any] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is func.__code__:
            captured.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = func(*args)
    finally:
        sys.setprofile(previous)
    return result, captured


def worked_example_section(text: str) -> str:
    start = re.search(r"^## .*worked example.*$", text, re.M | re.I)
    assert start, "derivation.md has no worked-example section"
    end = re.search(r"^## ", text[start.end() :], re.M)
    return text[start.start() : start.end() + (end.start() if end else len(text))]


def worked_example_tables(text: str) -> dict[str, list[tuple[str, np.ndarray, str]]]:
    """marker → [(code expression, value, the value as written)] of each marked table."""
    tables = {}
    for m in re.finditer(r"<!-- worked-example: (\S+) -->\n((?:\|.*\n)+)", text):
        lines = [line.strip().strip("|").split("|") for line in m.group(2).splitlines()]
        header = [cell.strip() for cell in lines[0]]
        code_col = next(i for i, cell in enumerate(header) if "code" in cell)
        value_col = header.index("value")
        rows = []
        for cells in lines[2:]:
            code = cells[code_col].strip().strip("`")
            written = cells[value_col].strip()
            rows.append((code, np.array(ast.literal_eval(written), dtype=float), written))
        tables[m.group(1)] = rows
    return tables


def six_digits_close(written: np.ndarray, computed: np.ndarray) -> np.ndarray:
    """Entry-wise: does ``written`` equal ``computed`` rounded to 6 significant digits?"""
    scale = np.maximum(np.abs(written), np.abs(computed))
    exponent = np.floor(np.log10(np.where(scale > 0, scale, 1.0)))
    tolerance = np.where(scale > 0, 0.51 * 10.0 ** (exponent - 5), 1e-12)
    return np.abs(written - computed) <= tolerance


def test_six_digits_close() -> None:
    written, computed = (
        np.array([0.608259, -0.0122003, 0.0]),
        np.array([0.60825927, -0.012200304, 0]),
    )
    assert six_digits_close(written, computed).all()
    assert not six_digits_close(np.array([0.608258]), np.array([0.60825927])).any()


def test_worked_example_matches_the_code() -> None:
    text = read(DERIVATION)
    tables = worked_example_tables(text)
    assert set(tables) == {"inputs", "npgru.gru.step_forward", "npgru.gru.step_backward"}

    # the inputs table is exactly what the page's own code block builds
    page = run_blocks(DERIVATION)
    inputs: dict[str, Any] = {"params": {}}
    for code, value, _ in tables["inputs"]:
        assert np.array_equal(eval(code, {}, page), value), f"inputs table vs code block: {code}"
        m = re.fullmatch(r'params\["(\w+)"\]', code)
        if m:
            inputs["params"][m.group(1)] = value
        else:
            inputs[code] = value
    assert set(inputs) == {"params", "X_1", "H_0", "dH_1"}
    params = inputs["params"]
    assert set(params) == set(npgru.gru.PARAM_NAMES["d2l"])
    assert inputs["X_1"].shape == (1, 3) and inputs["H_0"].shape == (1, 2)  # B=1, D=3, H=2

    # run the code on those inputs and read its variables as each function returns
    (_, cache), forward_locals = locals_on_return(
        npgru.gru.step_forward, inputs["X_1"], inputs["H_0"], params
    )
    _, backward_locals = locals_on_return(npgru.gru.step_backward, inputs["dH_1"], cache)
    scopes = {
        "npgru.gru.step_forward": forward_locals,
        "npgru.gru.step_backward": backward_locals,
    }
    checked = 0
    for marker, scope in scopes.items():
        assert tables[marker], f"the {marker} table is empty"
        for code, written, as_written in tables[marker]:
            computed = np.asarray(eval(code, {}, scope), dtype=float)
            assert computed.shape == written.shape, f"{code}: shape {computed.shape} in the code"
            ok = six_digits_close(written, computed)
            assert ok.all(), f"{code}: the doc says {as_written}, the code computes {computed}"
            checked += written.size
    assert checked >= 60

    # numbers quoted in the prose of the section are copies of table values
    table_values = {
        float(v) for rows in tables.values() for _, value, _ in rows for v in value.flat
    }
    prose = FENCE.sub("", worked_example_section(text))
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("|"))
    quoted = [float(n) for n in re.findall(r"-?\d+\.\d{4,}", prose)]
    assert quoted, "the worked example should walk through some numbers in the text"
    for number in quoted:
        assert number in table_values or -number in table_values, (
            f"{number} in the worked example's text is not in its tables"
        )


def test_worked_example_number_format() -> None:
    """Each computed value is written with (up to) 6 significant digits, no more."""
    for marker, rows in worked_example_tables(read(DERIVATION)).items():
        if marker == "inputs":
            continue
        for code, _, written in rows:
            for token in NUMBER.findall(written):
                digits = token.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
                assert 1 <= len(digits) <= 6, f"{code}: {token} is not 6 significant digits"


# --------------------------------------------------------------------------------------
# 4. the figure script


def test_make_figures_writes_the_committed_figure(tmp_path: Path) -> None:
    import runpy

    script = runpy.run_path(str(DOCS / "make_figures.py"), run_name="make_figures")
    written = script["main"](["--out", str(tmp_path)])
    assert [p.name for p in written] == ["gru_step.svg"]
    svg = (tmp_path / "gru_step.svg").read_text(encoding="utf-8")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = "".join(root.itertext())
    for label in ("dA", "dRH", "W", "tanh", "σ", "⊙"):
        assert label in texts
    committed = DOCS / "figures" / "gru_step.svg"
    assert committed.read_text(encoding="utf-8") == svg, (
        "docs/figures/gru_step.svg is stale: run python docs/make_figures.py"
    )
    assert "figures/gru_step.svg" in read(DERIVATION)


def test_doc_numbers_parse() -> None:
    assert math.isclose(float(NUMBER.findall("[[-0.0122003, 1e-05]]")[1]), 1e-05)


# --------------------------------------------------------------------------------------
# 5. the docs site (mkdocs.yml): read here without MkDocs; CI builds it with --strict

MKDOCS = ROOT / "mkdocs.yml"
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def mkdocs_section(key: str) -> list[str]:
    """The lines of a top-level section of mkdocs.yml (``nav:``, ...), comments dropped."""
    lines, inside = [], False
    for line in read(MKDOCS).splitlines():
        if re.match(rf"{key}:\s*(#.*)?$", line):
            inside = True
        elif inside and line and not line[0].isspace() and not line.startswith("#"):
            break
        elif inside and line.split("#", 1)[0].strip():
            lines.append(re.sub(r"\s+#.*$", "", line))  # a comment after the value
    return lines


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, as paths inside docs/ (``- Title: page.md``)."""
    pages = []
    for line in mkdocs_section("nav"):
        m = re.search(r"(?:^|[\s:])([\w./-]+\.md)\s*['\"]?\s*$", line)
        if m:
            pages.append(m.group(1))
    return pages


def test_mkdocs_section_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        "site_name: x\nnav:\n  - Home: index.md  # the front page\n  - Part:\n"
        '      - "A: title with a colon": a.md\n      # - old.md\n      - sub/b.md\n'
        "theme:\n  name: material\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "MKDOCS", config)
    assert nav_pages() == ["index.md", "a.md", "sub/b.md"]
    assert mkdocs_section("theme") == ["  name: material"]


def test_every_docs_page_is_in_the_nav() -> None:
    """A page that is not in the nav is not reachable on the site: list each one once."""
    nav = nav_pages()
    assert nav[0] == "index.md", "the site's home is docs/index.md, the nav's first entry"
    duplicates = sorted({page for page in nav if nav.count(page) > 1})
    assert not duplicates, f"mkdocs.yml lists these pages twice: {duplicates}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(pages - set(nav))
    assert not missing, (
        f"docs pages not in mkdocs.yml's nav: {missing}; add a line `- Title: page.md` "
        "under nav: in mkdocs.yml (paths relative to docs/)"
    )
    absent = sorted(set(nav) - pages)
    assert not absent, f"mkdocs.yml's nav lists pages that docs/ does not have: {absent}"


def test_links_stay_inside_docs() -> None:
    """A link out of docs/ (../benchmarks/...) fails `mkdocs build --strict` and is dead on
    the site: name files outside docs/ as code paths in backticks (`benchmarks/README.md`)."""
    bad = []
    for path in sorted(DOCS.rglob("*.md")):
        prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", read(path)))
        for target in MD_LINK.findall(prose):
            if re.match(r"[a-z][\w+.-]*:|#", target):  # https:, mailto:, an anchor
                continue
            file = (path.parent / target.split("#", 1)[0]).resolve()
            if not file.is_relative_to(DOCS.resolve()) or not file.exists():
                bad.append(f"{path.relative_to(DOCS)}: {target}")
    assert not bad, f"links that leave docs/ or lead nowhere: {bad}"


def documented_modules() -> set[str]:
    """The modules with a ``::: npgru.x`` page in docs/reference/."""
    found = set()
    for path in (DOCS / "reference").glob("*.md"):
        found.update(re.findall(r"^::: (npgru(?:\.\w+)*)\s*$", read(path), re.M))
    return found


def test_the_public_modules_have_a_reference_page() -> None:
    """Each module that ``npgru/__init__.py`` imports from (the public API) has its page,
    linked from docs/reference/index.md."""
    tree = ast.parse(read(ROOT / "npgru" / "__init__.py"))
    public = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "npgru":
            public.update(f"npgru.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            public.add(node.module)
    public -= {"npgru.version"}  # __version__ only
    assert {"npgru.gru", "npgru.model", "npgru.errors"} <= public
    documented = documented_modules()
    missing = sorted(public - documented)
    assert not missing, (
        f"public modules without an API page: {missing}; add docs/reference/<name>.md holding "
        "`::: npgru.<name>`, and list it in mkdocs.yml's nav and in docs/reference/index.md"
    )
    for name in documented:
        exists(name)  # a page for a module that does not exist fails here
    index = read(DOCS / "reference" / "index.md")
    for path in (DOCS / "reference").glob("*.md"):
        if path.name != "index.md":
            assert f"]({path.name})" in index, f"docs/reference/index.md does not link {path.name}"


def test_the_site_config() -> None:
    """Material, math through arithmatex and MathJax, the docstrings through mkdocstrings;
    the local scripts exist; the docs extra installs what it needs; CI builds with --strict."""
    config = read(MKDOCS)
    assert re.search(r"^theme:\n\s+name: material$", config, re.M)
    assert re.search(r"- pymdownx\.arithmatex:\n\s+generic: true", config)
    assert "- mkdocstrings:" in config and re.search(r"^docs_dir: docs$", config, re.M)
    scripts = [line.strip()[2:] for line in mkdocs_section("extra_javascript")]
    assert any("mathjax" in s for s in scripts if s.startswith("https://"))
    for script in scripts:
        assert script.startswith("https://") or (DOCS / script).is_file(), script
    for extension in re.findall(r"^\s+- (docs/[\w/]+\.py)(?::\w+)?$", config, re.M):
        assert (ROOT / extension).is_file(), extension
    setup = read(ROOT / "setup.cfg")
    docs_extra = re.search(r"^docs =\n((?:[ \t]+.*\n)+)", setup, re.M)
    assert docs_extra, "setup.cfg declares no docs extra"
    for package in ("mkdocs", "mkdocs-material", "mkdocstrings-python", "pymdown-extensions"):
        assert re.search(rf"^\s+{package}>=\d", docs_extra.group(1), re.M), package
    run = read(ROOT / ".ci" / "run")
    assert '".[docs]"' in run and "mkdocs build --strict" in run
    assert re.search(r"^site/$", read(ROOT / ".gitignore"), re.M)


# the griffe extension that turns the docstrings' Sphinx roles into Markdown (docs site only)
ROLES = DOCS / "griffe_roles.py"


def test_docstring_roles_to_markdown() -> None:
    import runpy

    to_markdown = runpy.run_path(str(ROLES))["to_markdown"]
    known = {"npgru.gru.forward": "npgru.gru.forward", "FlatDict": "npgru.flat.FlatDict"}
    text = (
        "See :func:`~npgru.gru.forward`, :class:`FlatDict`, :class:`numpy.dtype` and "
        ":math:`σ(a)`; the steps::\n\n    Z_t = σ(A_z)\n\nthen\n\n"
        ".. math::  a = b\n\n>>> 1 + 1\n2\n\nend"
    )
    assert to_markdown(text, known.get) == (
        'See <autoref identifier="npgru.gru.forward" optional><code>forward</code></autoref>, '
        '<autoref identifier="npgru.flat.FlatDict" optional><code>FlatDict</code></autoref>, '
        "`numpy.dtype` and \\(σ(a)\\); the steps:\n\n    Z_t = σ(A_z)\n\nthen\n\n"
        "\\[ a = b \\]\n\n```pycon\n>>> 1 + 1\n2\n```\n\nend"
    )
    assert to_markdown("a\n\n::\n\n    code\n", known.get) == "a\n\n\n    code\n"
