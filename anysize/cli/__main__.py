"""``python -m anysize.cli``, the same as ``python -m anysize``."""

import sys

from . import main

sys.exit(main())
