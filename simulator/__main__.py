"""`python -m simulator` is the `trainsim` command."""

import sys

from simulator.cli import main

sys.exit(main())
