"""`python -m edge_listener ...`: the `dicom-adapter` command, from a checkout without installing it."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
