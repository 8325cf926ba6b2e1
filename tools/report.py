"""The tail every single-table benchmark shares: print the table and its provenance, and with an
output folder write ``<stem>.csv`` and ``<stem>.md`` (heading, provenance, notes, the table)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command() -> str:
    """The command line this process runs, as a provenance field."""
    return "python " + " ".join(map(shlex.quote, sys.argv))


def write_table(df, out: Path | None, stem: str, heading: str, provenance: str, notes: str = "",
                floatfmt: str = ".4g") -> None:
    """Print ``df`` and ``provenance``; with ``out``, write ``out/<stem>.csv`` and ``out/<stem>.md``."""
    print(df.to_string(index=False))
    print(provenance)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{stem}.csv", index=False)
    notes = f"{notes}\n\n" if notes else ""
    (out / f"{stem}.md").write_text(f"# {heading}\n\n{provenance}\n\n{notes}" + df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
