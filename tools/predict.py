"""`python tools/predict.py`: a shim for the `bnp-cxr-predict` command (bnp_cxr.cli.predict); see its --help."""

import sys

from bnp_cxr.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
