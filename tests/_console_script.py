"""What pip writes as the ``autoprune`` console script, for environments that have none next to the interpreter."""

import sys

from autoprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
