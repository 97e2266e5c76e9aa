"""`python tools/make_manifest.py`: a shim for `bnp-cxr-make-manifest` (bnp_cxr.cli.make_manifest); see its --help."""

import sys

from bnp_cxr.cli.make_manifest import main

if __name__ == "__main__":
    sys.exit(main())
