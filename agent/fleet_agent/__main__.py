"""`python -m fleet_agent` (and the zipapp's entry point)."""

import sys

from fleet_agent.cli import main

sys.exit(main())
