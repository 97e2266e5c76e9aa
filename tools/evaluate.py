"""`python tools/evaluate.py`: the `bnp-cxr-evaluate` command (bnp_cxr.cli.evaluate)."""

import sys

from bnp_cxr.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
