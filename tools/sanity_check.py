"""`python tools/sanity_check.py`: the `bnp-cxr-sanity-check` command (bnp_cxr.cli.sanity_check)."""

import sys

from bnp_cxr.cli.sanity_check import main

if __name__ == "__main__":
    sys.exit(main())
