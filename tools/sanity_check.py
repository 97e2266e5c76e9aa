"""`python tools/sanity_check.py`: a shim for the `bnp-cxr-sanity-check` command (bnp_cxr.cli.sanity_check); see its --help."""

import sys

from bnp_cxr.cli.sanity_check import main

if __name__ == "__main__":
    sys.exit(main())
