"""`python -m ringfleet_cli`: the `ringfleet` command."""

from __future__ import annotations

import sys

from ringfleet_cli.main import main

sys.exit(main())
