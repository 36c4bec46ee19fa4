"""`python -m fleet` = the `fleet` command (used by `fleet up` to start its parts)."""

from fleet.cli import main

main()
