"""Rebuild every table and figure of results/ and the README from committed results only.

    python tools/make_tables.py            # rewrite tables, figures and the README's result blocks
    python tools/make_tables.py --check    # exit 1 if a committed table or README block is stale

Nothing is measured: the inputs are the records, configs and CSVs the other tools wrote (see
``experiments/report.py`` for what is built from what). ``--check`` rebuilds the text outputs in a
scratch copy and compares them with the committed files; figures are not compared.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.report import build  # noqa: E402


def check(results: Path, readme: Path) -> list[str]:
    """Paths (relative to the repository) whose committed text differs from a fresh rebuild."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "results"
        shutil.copytree(results, copy, ignore=shutil.ignore_patterns("*.png"))
        readme_copy = Path(scratch) / readme.name
        shutil.copy(readme, readme_copy)
        stale = []
        for path in build(copy, readme_copy, figures=False):
            original = readme if path == readme_copy else results / path.relative_to(copy)
            if not original.exists() or original.read_text() != path.read_text():
                stale.append(str(original.relative_to(results.parent) if original != readme else readme.name))
        return stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        raise SystemExit(f"--results: no folder {args.results}")
    if args.check:
        stale = check(args.results, args.readme)
        for path in stale:
            print(f"stale: {path}")
        print("up to date" if not stale else f"{len(stale)} file(s) differ from a rebuild: run python tools/make_tables.py")
        return 1 if stale else 0
    written = build(args.results, args.readme)
    print(f"rebuilt {len(written)} tables and the figures under {args.results}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
