"""Entry point of ``python -m numgru``; see :mod:`numgru.cli`."""

import sys

from numgru.cli import main

if __name__ == "__main__":
    sys.exit(main())
