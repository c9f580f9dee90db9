"""``python -m recsys.evaluation`` (``make eval``): the protocols' command line."""

import sys

from recsys.evaluation.protocols import main

sys.exit(main())
