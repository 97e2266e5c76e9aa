"""`python tools/train.py`: a shim for the `bnp-cxr-train` command (bnp_cxr.cli.train); see its --help."""

import sys

from bnp_cxr.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
