"""`python tools/predict.py`: the `bnp-cxr-predict` command (bnp_cxr.cli.predict)."""

import sys

from bnp_cxr.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
