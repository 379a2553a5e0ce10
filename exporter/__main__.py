"""`python -m exporter` is the same as the `anomaly-exporter` console script."""

import sys

from exporter.cli import main

sys.exit(main())
