"""`python tools/make_phantom.py`: the `bnp-cxr-make-phantom` command (bnp_cxr.cli.make_phantom)."""

import sys

from bnp_cxr.cli.make_phantom import main

if __name__ == "__main__":
    sys.exit(main())
