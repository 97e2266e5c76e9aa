"""`python tools/train.py`: the `bnp-cxr-train` command (bnp_cxr.cli.train)."""

import sys

from bnp_cxr.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
