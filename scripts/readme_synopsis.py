"""Rewrite the README's command synopsis from the command line itself, so it cannot drift.

    python scripts/readme_synopsis.py            # rewrite the block between the synopsis markers
    python scripts/readme_synopsis.py --check    # exit 1 when the README's block is out of date

Each command's line lists every option and argument its `--help` shows: required ones bare,
optional ones in brackets, repeatable ones followed by `...`; the first sentence of its help
comes first as a comment. tests/test_readme.py checks the README block equals `render()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START, END = "<!-- synopsis:start -->", "<!-- synopsis:end -->"
WIDTH = 100


def _metavar(param) -> str:
    """The value placeholder of an option: N for numbers, else the option's name in capitals."""
    if getattr(param, "metavar", None):
        return param.metavar
    kind = param.bare_type()
    if kind in ("int", "list[int]"):
        return "N"
    if kind in ("float", "list[float]"):
        return "X"
    long = sorted(param.opts, key=len)[-1]
    return long.lstrip("-").upper().replace("-", "_")


def _piece(param) -> str:
    """One option or argument as the synopsis shows it."""
    from typer.core import TyperArgument

    if isinstance(param, TyperArgument):
        name = param.name.upper() + ("..." if param.nargs != 1 else "")
        return name if param.required else f"[{name}]"
    names = sorted(param.opts, key=len, reverse=True)          # --long before -s
    flag = names[0] if len(names) == 1 else f"{names[0]}|{names[1]}"
    if param.is_flag or param.count:
        text = flag
    else:
        text = f"{flag} {_metavar(param)}"
    if param.required:
        return text
    return f"[{text}]" + ("..." if getattr(param, "multiple", False) or param.count else "")


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text.split("; ")[0].split(". ")[0].rstrip(".")


def _lines(head: str, pieces: list[str]) -> list[str]:
    """`head piece piece ...` wrapped at WIDTH between pieces, continuation lines aligned after the head."""
    lines, line = [], head
    for piece in pieces:
        if len(line) + 1 + len(piece) > WIDTH and line.strip():
            lines.append(line)
            line = " " * len(head)
        line += " " + piece
    return lines + [line]


def render() -> str:
    """The synopsis of every command, from the typer app (what `--help` shows)."""
    import typer

    from stcstore.cli import app

    group = typer.main.get_command(app)
    out = ["```"]
    root = [_piece(p) for p in group.params if p.name != "help"]
    out += _lines("stcstore", [*root, "COMMAND", "..."])
    width = max(len(name) for name in group.commands)
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        out.append("")
        out.append(f"# {_first_sentence(cmd.help)}")
        pieces = [_piece(p) for p in cmd.params if p.name != "help"]
        # required options, then arguments, then optional options (each in declaration order)
        options = [p for p in pieces if p.startswith("-")]
        arguments = [p for p in pieces if not p.startswith(("-", "[-"))]
        pieces = options + arguments + [p for p in pieces if p.startswith("[-")]
        out += _lines(f"stcstore {name:<{width}}", pieces)
    out.append("```")
    return "\n".join(out) + "\n"


def replace_block(readme: str, block: str) -> str:
    """The README text with the block between the markers replaced."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md must hold exactly one {START} ... {END} block")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}{END}{tail}"


def current_block(readme: str) -> str:
    """What the README holds between the markers."""
    return readme.split(START)[1].split(END)[0].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's synopsis is out of date")
    args = ap.parse_args(argv)
    readme = README.read_text(encoding="utf-8")
    block = render()
    if args.check:
        if current_block(readme) != block:
            print("README synopsis is out of date: run python scripts/readme_synopsis.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(replace_block(readme, block), encoding="utf-8")
    print(f"wrote the synopsis of {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
