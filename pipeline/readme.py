"""README's results table, generated from the committed ``reports/tables/table7.md``.

    python -m pipeline.readme          # rewrite the tables under "## Converged CPU runs" and "## Results"

Each row of table7 (family headers aside) becomes a row of method, CSO-mAP (ours, ± std over
seeds and the published value as table7 prints them), AP05..AP25, FPS and the matched metrics (Jaccard,
RMSE, efficiency; ours only). The converged-runs table is ``reports/tables/converged.md``'s, as
``python -m pipeline.long_run report`` writes it.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.io import atomic_path

COLUMNS = ("CSO-mAP", "AP05", "AP10", "AP15", "AP20", "AP25", "FPS", "JI", "RMSE (px)", "Eff.")
_OURS = re.compile(r"^(—|-?[\d,]+(?:\.\d+)?(?: ± [\d.]+)?)")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def results_table(table7: str) -> str:
    """The README table (markdown) of the rows of a table7 markdown text."""
    lines = table7.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| Method"))
    header = _cells(lines[header_at])
    out = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for line in lines[header_at + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, _cells(line)))
        if cells["Method"].startswith("**"):
            continue
        shown = [cells["CSO-mAP"]] + [_OURS.match(cells.get(c, "—")).group(1) for c in COLUMNS[1:]]
        out.append("| " + " | ".join([cells["Method"], *shown]) + " |")
    return "\n".join(out) + "\n"


def with_results(readme: str, table: str) -> str:
    """``readme`` with the first markdown table of its "## Results" section replaced by ``table``."""
    head, section = readme.split("## Results", 1)
    lines = section.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("| method"))
    stop = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return head + "## Results" + "".join(lines[:start]) + table + "".join(lines[stop:])


CONVERGED_HEADING = "## Converged CPU runs"


def converged_table(converged: str) -> str:
    """The markdown table of ``reports/tables/converged.md`` (pipeline.long_run report)."""
    lines = [line for line in converged.splitlines() if line.startswith("|")]
    return "\n".join(lines) + "\n"


def with_converged(readme: str, table: str) -> str:
    """``readme`` with the first table of its converged-runs section replaced by ``table``
    (unchanged when README has no such section)."""
    if CONVERGED_HEADING not in readme:
        return readme
    head, section = readme.split(CONVERGED_HEADING, 1)
    lines = section.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    stop = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return head + CONVERGED_HEADING + "".join(lines[:start]) + table + "".join(lines[stop:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.readme", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table7", type=Path, default=Path("reports/tables/table7.md"))
    parser.add_argument("--converged", type=Path, default=Path("reports/tables/converged.md"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    updated = with_results(args.readme.read_text(), results_table(args.table7.read_text()))
    if args.converged.is_file():
        updated = with_converged(updated, converged_table(args.converged.read_text()))
    with atomic_path(args.readme) as tmp:
        tmp.write_text(updated)
    print(f"{args.readme}: results table from {args.table7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
