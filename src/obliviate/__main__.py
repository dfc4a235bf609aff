"""``python -m obliviate``: the same command line as the ``obliviate`` script."""

import sys

from obliviate.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
