"""`python tools/make_tfrecords.py`: the `bnp-cxr-make-tfrecords` command (bnp_cxr.cli.make_tfrecords)."""

import sys

from bnp_cxr.cli.make_tfrecords import main

if __name__ == "__main__":
    sys.exit(main())
