"""``python -m flexai``: the same as the ``flexai`` command."""
import sys

from flexai.cli import main

if __name__ == "__main__":
    sys.exit(main())
