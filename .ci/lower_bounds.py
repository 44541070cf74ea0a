"""Print pip constraints that pin each runtime dependency to the lower bound pyproject declares.

The lowest-versions job (``.ci/run-lowest``) installs the project under these constraints, so the
bounds users are promised are the ones the tests ran on. Only ``>=`` bounds of the default install
are pinned: the dev tools (pytest, mkdocs, ...) are not part of what users run. pip has no
"lowest" resolution of its own (uv's ``--resolution lowest-direct`` does the same), hence this.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
_BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$")


def lower_bounds(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{distribution: lowest version}`` for every default dependency; an unbounded one is an error."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = {}
    for requirement in dependencies:
        match = _BOUND.match(requirement.split(";")[0])
        name, spec = match.group(1), match.group(3)
        lows = [part.strip()[2:].strip() for part in spec.split(",") if part.strip().startswith(">=")]
        if len(lows) != 1:
            raise SystemExit(f"{requirement!r}: a runtime dependency needs exactly one '>=' lower bound")
        out[name] = lows[0]
    return out


def main() -> int:
    for name, version in lower_bounds().items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
