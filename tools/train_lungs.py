"""`python tools/train_lungs.py`: the `bnp-cxr-train-lungs` command (bnp_cxr.cli.train_lungs)."""

import sys

from bnp_cxr.cli.train_lungs import main

if __name__ == "__main__":
    sys.exit(main())
