"""``python -m byzrsa``: the ``byzrsa`` command line."""

import sys

from byzrsa.cli import main

sys.exit(main())
