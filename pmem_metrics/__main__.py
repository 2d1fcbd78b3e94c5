"""``python -m pmem_metrics``: see :mod:`pmem_metrics.cli`."""

import sys

from .cli import main

sys.exit(main())
