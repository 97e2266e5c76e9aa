"""`python tools/make_manifest.py`: the `bnp-cxr-make-manifest` command (bnp_cxr.cli.make_manifest)."""

import sys

from bnp_cxr.cli.make_manifest import main

if __name__ == "__main__":
    sys.exit(main())
