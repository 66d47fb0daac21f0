"""``python -m hipp_torchprune.cli``."""

import sys

from hipp_torchprune.cli import main

sys.exit(main())
