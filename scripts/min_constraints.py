"""Print `pkg==floor` constraints for every `pkg>=floor` dependency pyproject.toml declares.

CI installs the project against these in a second environment (.venv-min) so the declared
floors stay true. torch is left out: it is installed first, pinned (see scripts/setup.sh).
Usage: python scripts/min_constraints.py [--extras models,test] > constraints.txt
       python scripts/min_constraints.py --check constraints.txt   (in the environment: each pin installed)
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*>=\s*([0-9][A-Za-z0-9.]*)\s*$")
# installed before the project, pinned: never constrained here
_SKIP = {"torch"}


def floors(pyproject: Path, extras: list[str]) -> list[str]:
    """`name==floor` for each `name>=floor` requirement of the project and the given extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}: pyproject.toml has {', '.join(optional)}")
        reqs += optional[extra]
    out = []
    for req in reqs:
        m = _REQ.match(req)
        if m and m.group(1).lower() not in _SKIP:
            out.append(f"{m.group(1)}=={m.group(3)}")
    return out


def check(constraints: Path) -> list[str]:
    """Pins of a constraints file that the running environment does not have (name, wanted, found)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    bad = []
    for line in constraints.read_text(encoding="utf-8").split():
        name, want = line.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            bad.append(f"{name}: wanted {want}, not installed")
            continue
        if Version(have) != Version(want):
            bad.append(f"{name}: wanted {want}, found {have}")
    return bad


def main(argv: list[str] | None = None) -> None:
    """Write the constraints to stdout (or check an environment against them)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyproject", default=str(Path(__file__).resolve().parents[1] / "pyproject.toml"))
    ap.add_argument("--extras", default="", help="comma-separated extras whose floors to add too")
    ap.add_argument("--check", metavar="CONSTRAINTS", help="exit 1 unless this environment has every pin")
    args = ap.parse_args(argv)
    if args.check:
        bad = check(Path(args.check))
        if bad:
            raise SystemExit("not at the declared floors: " + "; ".join(bad))
        print(f"at the declared floors: {args.check}", file=sys.stderr)
        return
    extras = [e for e in args.extras.split(",") if e]
    sys.stdout.write("".join(line + "\n" for line in floors(Path(args.pyproject), extras)))


if __name__ == "__main__":
    main()
