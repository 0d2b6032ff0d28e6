"""``python -m brian_lcsnn`` is the ``lcsnn`` command."""

import sys

from .cli import main

sys.exit(main())
