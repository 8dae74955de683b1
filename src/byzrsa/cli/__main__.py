"""``python -m byzrsa.cli``."""

import sys

from byzrsa.cli import main

sys.exit(main())
