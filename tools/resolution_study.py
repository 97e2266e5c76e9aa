"""`python tools/resolution_study.py`: the `bnp-cxr-resolution-study` command (bnp_cxr.cli.resolution_study)."""

import sys

from bnp_cxr.cli.resolution_study import main

if __name__ == "__main__":
    sys.exit(main())
