"""The docstrings' Sphinx markup as Markdown, for the API reference of the docs site.

npgru's docstrings are Google style with a few reStructuredText habits that read well in
``help()`` and in an editor: roles such as :func:`forward` or :class:`~npgru.flat.FlatDict`,
inline :math:`σ(a)`, and a paragraph ending in ``::`` before an indented block. mkdocstrings
renders Markdown, so this griffe extension (named in ``mkdocs.yml``) rewrites them once the
package is loaded:

* a role naming an npgru object becomes a link to that object's entry in the reference
  (plain code where the reference has none: a private helper, an undocumented constant), a
  role naming anything else (``numpy.dtype``) plain code; ``~`` keeps only the last component
  as the text, as in Sphinx;
* ``:math:`...``` becomes ``\\(...\\)``, which ``pymdownx.arithmatex`` hands to MathJax;
* a ``.. math::`` directive becomes a display ``\\[...\\]``;
* ``text::`` before a literal block becomes ``text:``;
* a doctest (lines from ``>>>`` to a blank line) becomes a ``pycon`` code block.

The docstrings in the source stay as they are. ``tests/test_docs.py`` tests :func:`to_markdown`
without MkDocs or griffe installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

try:
    from griffe import Extension
except ImportError:  # the tests run without the docs extra
    Extension = object  # type: ignore[assignment,misc]

ROLE = re.compile(r":(?P<role>[a-z]+):`(?P<target>[^`]+)`")
# before a literal block: "text::" ends a paragraph (it becomes "text:"), or "::" stands alone
MARKER_AFTER_TEXT = re.compile(r"(?<=\S)::(?=\n[ \t]*\n)")
MARKER_ALONE = re.compile(r"^[ \t]*::\n(?=[ \t]*\n)", re.M)
# ".. math:: formula", the formula maybe continued (or only given) on the indented lines below
MATH_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n"
    r"(?P<body>(?:(?:[ \t]*\n)?(?:(?P=indent)[ \t]+\S.*\n)+)?)",
    re.M,
)

# a doctest: from a line starting with ">>> " to the next blank line
DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>> .*\n(?:(?P=indent)\S.*\n)*", re.M)


def to_markdown(text: str, resolve: Callable[[str], str | None]) -> str:
    """``text`` with its roles, math and ``::`` markers as Markdown.

    Args:
        text: a docstring.
        resolve: the full path of the npgru object a role's target names (as written, without
            ``~``), or None when it names none.
    """

    def role(m: re.Match[str]) -> str:
        name, target = m["role"], m["target"]
        if name == "math":
            return rf"\({target}\)"
        short = target.startswith("~")
        target = target.lstrip("~")
        shown = target.rsplit(".", 1)[-1] if short else target
        path = resolve(target)
        if path is None:
            return f"`{shown}`"
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

    def display(m: re.Match[str]) -> str:
        formula = " ".join(line.strip() for line in (m["first"], *m["body"].splitlines()))
        return rf"{m['indent']}\[ {formula.strip()} \]" + "\n"

    def doctest(m: re.Match[str]) -> str:
        return f"{m['indent']}```pycon\n{m[0]}{m['indent']}```\n"

    text = DOCTEST.sub(doctest, MATH_DIRECTIVE.sub(display, text + "\n"))[:-1]
    text = MARKER_ALONE.sub("", MARKER_AFTER_TEXT.sub(":", text))
    return ROLE.sub(role, text)


def _member(root: Any, path: str) -> Any:
    """The object at the dotted ``path`` below the package ``root``, or None."""
    parts = path.split(".")
    if parts[0] != root.name:
        return None
    obj = root
    try:
        for part in parts[1:]:
            obj = obj.members[part]
        return obj
    except Exception:  # no such member, or an alias that does not resolve
        return None


def _objects(obj: Any) -> Any:
    """``obj`` and every object defined below it (aliases, imported names, are skipped)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class SphinxRoles(Extension):  # type: ignore[misc,valid-type]
    """Rewrite the docstrings of a loaded package with :func:`to_markdown`."""

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is None:
                continue
            scopes = [p.path for p in (obj, obj.parent) if p is not None and p.is_class]
            scopes.append(obj.module.path)

            def resolve(target: str, scopes: list[str] = scopes) -> str | None:
                for candidate in (target, *(f"{scope}.{target}" for scope in scopes)):
                    found = _member(pkg, candidate)
                    if found is not None:
                        try:
                            return str(found.canonical_path)
                        except Exception:  # an alias whose target is not loaded
                            return candidate
                return None

            obj.docstring.value = to_markdown(obj.docstring.value, resolve)

    # older griffe versions call this name; griffe 2 calls on_package only
    def on_package_loaded(self, *, pkg: Any, **kwargs: Any) -> None:
        self.on_package(pkg=pkg, **kwargs)
