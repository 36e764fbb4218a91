"""Draw the figures of ``docs/derivation.md``.

    python docs/make_figures.py              # writes docs/figures/gru_step.svg
    python docs/make_figures.py --out DIR    # writes DIR/gru_step.svg

The SVG is written by hand from the node and edge lists below, with no plotting library,
so the output depends on nothing but this file: the same bytes on every machine, and a
test (``tests/test_docs.py``) checks that the committed figure is up to date.

The figure is the computational graph of one step of the d2l GRU (eqs. 1-4): rounded
boxes are values (inputs grey, the output green), circles are operations that take two
inputs, and a label on an edge names what happens along it (a weight matrix that
multiplies on the right, or an element-wise function). Red labels under each value name
its gradient as ``npgru.gru.step_backward`` calls it, with the equation that computes it.
The two blue paths are the direct ways H_{t-1} reaches H_t (through Z ⊙ H_{t-1} and through
R ⊙ H_{t-1}); the thin blue edges are the paths through the gate pre-activations.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from xml.sax.saxutils import escape

FIGURES = Path(__file__).resolve().parent / "figures"

WIDTH, HEIGHT = 1080, 560
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
COLORS = {
    "x": "#6b6b6b",  # edges leaving X_t
    "h": "#1f5fbf",  # edges leaving H_{t-1}
    "main": "#222222",  # everything else
    "grad": "#b3261e",  # gradient labels
}

# name: (x, y, kind, label, gradient label). kind: "in", "value", "out" (boxes) or "op".
# Labels use a small markup: "_{...}" is a subscript, "~H" is H with a tilde; a gradient
# label that starts with "^" goes above the box instead of below it.
NODES = {
    "X": (80, 250, "in", "X_{t}", "dX_{t}  (12)"),
    "Hp": (80, 470, "in", "H_{t-1}", "dH_{prev}  (11)"),
    "Ar": (310, 70, "value", "A_{r}", "dA_{r}  (10)"),
    "R": (430, 70, "value", "R_{t}", ""),
    "m_r": (430, 200, "op", "⊙", "dRH  (9)"),
    "Ah": (590, 200, "value", "A_{h}", "^dA_{h}  (7)"),
    "Ht": (730, 200, "value", "~H_{t}", "dH_{tilde}  (5)"),
    "Az": (310, 340, "value", "A_{z}", "dA_{z}  (8)"),
    "Z": (430, 340, "value", "Z_{t}", "dZ  (6)"),
    "omz": (730, 340, "op", "1−", ""),
    "m_h": (870, 270, "op", "⊙", ""),
    "m_z": (870, 470, "op", "⊙", ""),
    "plus": (950, 370, "op", "+", ""),
    "Hn": (1030, 370, "out", "H_{t}", "dH_{t}  (13)"),
}

# (source, target, edge label, style, waypoints, label position or None for automatic).
# style: "x" (from X_t), "h" (from H_{t-1} into a gate), "hdirect" or "main".
EDGES = [
    ("X", "Ar", "W_{xr}", "x", [], (135, 185)),
    ("X", "Az", "W_{xz}", "x", [], (140, 302)),
    ("X", "Ah", "W_{xh}", "x", [(590, 250)], (520, 268)),
    ("Hp", "Ar", "W_{hr}", "h", [(170, 470), (170, 70)], (222, 62)),
    ("Hp", "Az", "W_{hz}", "h", [(240, 470), (240, 340)], (268, 420)),
    ("Hp", "m_r", "", "hdirect", [(205, 470), (205, 200)], None),
    ("Hp", "m_z", "", "hdirect", [], None),
    ("Ar", "R", "σ", "main", [], None),
    ("R", "m_r", "", "main", [], None),
    ("m_r", "Ah", "W_{hh}", "main", [], None),
    ("Ah", "Ht", "tanh", "main", [], None),
    ("Ht", "m_h", "", "main", [(870, 200)], None),
    ("Az", "Z", "σ", "main", [], None),
    ("Z", "omz", "", "main", [], None),
    ("omz", "m_h", "", "main", [(800, 340), (800, 270)], None),
    ("Z", "m_z", "", "main", [(520, 340), (520, 420), (870, 420)], None),
    ("m_h", "plus", "", "main", [(950, 270)], None),
    ("m_z", "plus", "", "main", [(950, 470)], None),
    ("plus", "Hn", "", "main", [], None),
]

# The legend, top right: (text, color key), one line each.
LEGEND = [
    ("eqs. 1, 2: the gates A_{z} → Z_{t}, A_{r} → R_{t}", "main"),
    ("eq. 3: the candidate A_{h} → ~H_{t}", "main"),
    ("eq. 4: the two ⊙ and the + on the right", "main"),
    ("thick blue: the two direct paths from H_{t-1}", "h"),
    ("thin blue: the paths through the gates", "h"),
    ("red: the gradient in step_backward (its eq.)", "grad"),
]
LEGEND_XY = (690, 28)

BOX_H = 38
OP_R = 17


def _box_width(label: str) -> float:
    plain = re.sub(r"[_{}~]", "", label)
    return max(64.0, 16.0 + 11.0 * len(plain))


def _markup(label: str, size: int) -> str:
    """SVG text content for a label: ``_{...}`` becomes a subscript, ``~X`` gets a tilde."""
    out = []
    for part in re.split(r"(_\{[^}]*\})", label):
        if not part:
            continue
        if part.startswith("_{"):
            sub = escape(part[2:-1])
            out.append(f'<tspan dy="{size * 0.3:.1f}" font-size="{size * 0.72:.1f}">{sub}</tspan>')
            out.append(f'<tspan dy="{-size * 0.3:.1f}"></tspan>')
        else:
            out.append(escape(re.sub(r"~(\w)", "\\1\u0303", part)))
    return "".join(out)


def _text(
    x: float,
    y: float,
    label: str,
    *,
    size: int = 16,
    color: str = "#222222",
    anchor: str = "middle",
    italic: bool = False,
    halo: bool = False,
) -> str:
    style = ' font-style="italic"' if italic else ""
    if halo:
        style += ' stroke="#ffffff" stroke-width="4" paint-order="stroke"'
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{color}" '
        f'text-anchor="{anchor}"{style}>{_markup(label, size)}</text>'
    )


def _clip(node: str, toward: tuple[float, float]) -> tuple[float, float]:
    """The point where the segment from ``node``'s centre toward a point leaves its shape."""
    x, y, kind, label, _ = NODES[node]
    dx, dy = toward[0] - x, toward[1] - y
    if dx == 0 and dy == 0:
        return x, y
    if kind == "op":
        d = math.hypot(dx, dy)
        return x + dx / d * OP_R, y + dy / d * OP_R
    half_w, half_h = _box_width(label) / 2, BOX_H / 2
    t = min(half_w / abs(dx) if dx else math.inf, half_h / abs(dy) if dy else math.inf)
    return x + dx * t, y + dy * t


def _edge(
    src: str, dst: str, label: str, style: str, waypoints: list, label_at: tuple | None
) -> list[str]:
    start, end = NODES[src][:2], NODES[dst][:2]
    points = [start, *waypoints, end]
    points[0] = _clip(src, points[1])
    points[-1] = _clip(dst, points[-2])
    key = "h" if style.startswith("h") else style
    width = 3.2 if style == "hdirect" else 1.6
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(points)
    )
    parts = [
        f'<path d="{path}" fill="none" stroke="{COLORS[key]}" stroke-width="{width}" '
        f'marker-end="url(#arrow-{key})"/>'
    ]
    if label and label_at is not None:
        parts.append(_text(*label_at, label, size=14, color=COLORS[key], halo=True))
    elif label:
        (x0, y0), (x1, y1) = points[-2], points[-1]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        length = math.hypot(x1 - x0, y1 - y0)
        nx, ny = -(y1 - y0) / length, (x1 - x0) / length  # unit normal, to the left
        if ny > 0 or (ny == 0 and nx > 0):
            nx, ny = -nx, -ny  # put the label above (or left of) the edge
        parts.append(
            _text(mx + 12 * nx, my + 12 * ny + 5, label, size=14, color=COLORS[key], halo=True)
        )
    return parts


def _node(name: str) -> list[str]:
    x, y, kind, label, grad = NODES[name]
    parts = []
    if kind == "op":
        parts.append(
            f'<circle cx="{x}" cy="{y}" r="{OP_R}" fill="#ffffff" stroke="#222222" '
            f'stroke-width="1.6"/>'
        )
        parts.append(_text(x, y + 6, label, size=17))
        if grad:  # the gradient of an operation's result, beside the circle
            parts.append(
                _text(
                    x - OP_R - 4,
                    y + OP_R + 14,
                    grad,
                    size=13,
                    color=COLORS["grad"],
                    anchor="end",
                    halo=True,
                )
            )
        return parts
    else:
        fill = {"in": "#e6e6e6", "value": "#ffffff", "out": "#dff0d8"}[kind]
        w = _box_width(label)
        parts.append(
            f'<rect x="{x - w / 2:.1f}" y="{y - BOX_H / 2:.1f}" width="{w:.1f}" '
            f'height="{BOX_H}" rx="8" fill="{fill}" stroke="#222222" stroke-width="1.6"/>'
        )
        parts.append(_text(x, y + 6, label, size=18, italic=True))
    if grad.startswith("^"):  # above the box, where an edge arrives from below
        parts.append(_text(x, y - BOX_H / 2 - 8, grad[1:], size=13, color=COLORS["grad"]))
    elif grad:
        parts.append(_text(x, y + BOX_H / 2 + 18, grad, size=13, color=COLORS["grad"], halo=True))
    return parts


def gru_step_svg() -> str:
    """The computational graph of one d2l GRU step, as the text of an SVG file."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}">',
        "<title>Computational graph of one GRU step (npgru, docs/derivation.md)</title>",
        "<defs>",
    ]
    for key in ("x", "h", "main"):
        lines.append(
            f'<marker id="arrow-{key}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{COLORS[key]}"/></marker>'
        )
    lines += ["</defs>", f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>']
    for edge in EDGES:
        lines += _edge(*edge)
    for name in NODES:
        lines += _node(name)
    x, y = LEGEND_XY
    for i, (text, color) in enumerate(LEGEND):
        lines.append(_text(x, y + 22 * i, text, size=14, color=COLORS[color], anchor="start"))
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gru_step.svg"
    path.write_text(gru_step_svg(), encoding="utf-8")
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    main()
