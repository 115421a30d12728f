"""``python -m valbench`` runs the CLI."""

import sys

from valbench.cli import main

if __name__ == "__main__":  # worker processes import this module too; they must not rerun the CLI
    sys.exit(main())
