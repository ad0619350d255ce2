"""``python -m ual.score INPUT --output OUTPUT ...``"""

from ual.score.cli import main

raise SystemExit(main())
