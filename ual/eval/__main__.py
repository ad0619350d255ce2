"""``python -m ual.eval eval gsm8k ...`` / ``analyze clustering ...`` / ``report ...``."""

import sys

from ual.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
