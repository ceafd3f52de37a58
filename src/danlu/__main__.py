"""``python -m danlu`` runs the ``danlu`` command (so ``torchrun -m danlu train ...`` works)."""

import sys

from danlu.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
