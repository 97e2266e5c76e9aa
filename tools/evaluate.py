"""`python tools/evaluate.py`: a shim for the `bnp-cxr-evaluate` command (bnp_cxr.cli.evaluate); see its --help."""

import sys

from bnp_cxr.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
