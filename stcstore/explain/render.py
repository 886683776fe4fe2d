"""Showing an Explanation: colour-coded tokens in the terminal (rich) and a bar chart (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .contributions import Explanation

__all__ = ["render_terminal", "plot_contributions", "check_top"]

_POS = (22, 150, 60)     # green: pushes towards the shown class
_NEG = (200, 40, 40)     # red: pushes away from it


def _style(value: float, scale: float) -> str:
    """Background shade proportional to |value| / scale, green for positive, red for negative."""
    if scale <= 0 or value == 0:
        return ""
    a = min(1.0, abs(value) / scale) ** 0.7
    base = _POS if value > 0 else _NEG
    r, g, b = (int(round(255 + (c - 255) * a)) for c in base)
    fg = "white" if a > 0.55 else "black"
    return f"{fg} on rgb({r},{g},{b})"


def check_top(top: Any) -> int:
    """The number of top-table rows, refusing anything but a whole number >= 0."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0:
        raise ConfigError(f"--top must be a whole number of table rows, 0 or more, got {top!r}")
    return int(top)


def render_terminal(expl: Explanation, console: Any, target: Any = None, top: int = 10) -> None:
    """Print the decision, the text with each token shaded by its contribution, and the top tokens (top=0: none)."""
    from rich.table import Table
    from rich.text import Text

    top = check_top(top)
    name, score, intercept, c = expl.view(target)
    scale = float(np.abs(c).max()) if c.size else 0.0
    proba = ", ".join(f"P({k})={p:.3f}" for k, p in zip(expl.classes, expl.proba))
    console.print(Text.assemble(("label: ", "bold"), (str(expl.label), "bold cyan"), f"   ({proba})"))
    console.print(
        f"score of {name!r} = intercept {intercept:+.4f} + sum of token contributions {c.sum():+.4f} "
        f"= {score:+.4f}   ({expl.pool} pooling, {expl.site}"
        f"{', relative to an average training text' if expl.centered else ''})",
        highlight=False, soft_wrap=True,
    )
    console.print(Text.assemble("shading: ", ("towards " + name, _style(scale, scale)), "  ",
                                ("away from " + name, _style(-scale, scale))))
    console.print()
    line = Text()
    if expl.offsets is not None:
        pos = 0
        for i, (s, e) in enumerate(expl.offsets):
            if expl.special[i] or e <= s:
                if line and not line.plain.endswith(" "):
                    line.append(" ")
                line.append(expl.tokens[i], style=_style(c[i], scale) or "dim")
                line.append(" ")
                continue
            if s > pos:
                line.append(expl.text[pos:s])
            elif s < pos:  # overlapping spans (byte-level pieces of one character): show once
                s = pos
            line.append(expl.text[s:e], style=_style(c[i], scale))
            pos = max(pos, e)
        if pos < len(expl.text):
            line.append(expl.text[pos:], style="dim")
    else:
        for i, tok in enumerate(expl.tokens):
            line.append(tok, style=_style(c[i], scale))
            line.append(" ")
    console.print(line)
    if expl.truncated:
        console.print("(the text was truncated to the run's max_length; the dim rest was not read)", style="dim")
    console.print()
    if top == 0:
        return
    # tokens that add nothing (every token but the chosen one under max/first/last pooling) are not "top"
    order = [i for i in np.argsort(-np.abs(c), kind="stable") if c[i] != 0][:top]
    if not order:
        console.print(f"no token contributes to the score of {name!r}: it is the intercept alone")
        return
    table = Table("#", "token", "position", f"contribution to {name!r}", title=f"top {len(order)} tokens by |contribution|")
    for rank, i in enumerate(order, 1):
        table.add_row(str(rank), Text(expl.tokens[i], style=_style(c[i], scale)), str(int(i)), f"{c[i]:+.4f}")
    console.print(table)


def plot_contributions(expl: Explanation, path: str | Path, target: Any = None) -> Path:
    """Bar chart of every token's contribution, in text order (top to bottom); writes a PNG (or any matplotlib format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"--plot {str(path)!r} is a folder: give a file path such as explain.png")
    name, score, intercept, c = expl.view(target)
    n = len(c)
    height = min(60.0, max(2.5, 0.24 * n + 1.4))
    fig, ax = plt.subplots(figsize=(7.5, height))
    colors = [tuple(v / 255 for v in (_POS if v > 0 else _NEG)) for v in c]
    y = np.arange(n)
    ax.barh(y, c, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(expl.tokens, fontsize=8 if n <= 80 else 6)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"contribution to the score of {name!r}")
    ax.set_title(
        f"label {expl.label!s}: score of {name!r} {score:+.3f} = intercept {intercept:+.3f} "
        f"+ tokens {c.sum():+.3f}\n({expl.pool} pooling, {expl.site})",
        fontsize=9,
    )
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot write --plot {str(path)!r} ({exc}): give a writable .png path") from None
    finally:
        plt.close(fig)
    return path
