"""``python -m benchmarks.detector [--split test|tune|both] [--quick] [--seed N] [--one-process]
[--json FILE]``."""

import sys

from benchmarks.detector.score import main

sys.exit(main())
