"""`python tools/report.py`: the `bnp-cxr-report` command (bnp_cxr.cli.report)."""

import sys

from bnp_cxr.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
