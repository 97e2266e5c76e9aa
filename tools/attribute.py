"""`python tools/attribute.py`: a shim for the `bnp-cxr-attribute` command (bnp_cxr.cli.attribute); see its --help."""

import sys

from bnp_cxr.cli.attribute import main

if __name__ == "__main__":
    sys.exit(main())
