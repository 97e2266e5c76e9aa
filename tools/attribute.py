"""`python tools/attribute.py`: the `bnp-cxr-attribute` command (bnp_cxr.cli.attribute)."""

import sys

from bnp_cxr.cli.attribute import main

if __name__ == "__main__":
    sys.exit(main())
