"""Regenerate the report of evaluated runs: report.md and a self-contained report.html in each run folder.

evaluate.py writes the report and attribute.py adds its section; this rewrites it from the run's files
(config.json, metrics.json, predictions.csv, the records' summary, report.json), e.g. after a sanity check.

    python tools/report.py work/runs/size256
    python tools/report.py work/runs/size*
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="evaluated run folder(s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bnp_cxr.evaluation.report import command_line, gather, record_command, write_report

    status = 0
    for run_dir in args.run_dirs:
        try:
            gather(run_dir)  # an unevaluated folder fails here, before anything is written into it
            record_command(run_dir, "report", command_line("report", argv))
            markdown, html = write_report(run_dir)
        except (FileNotFoundError, ValueError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        print(f"report: {html} (and {markdown.name})")
    return status


if __name__ == "__main__":
    sys.exit(main())
