"""``python -m defi_ws``: the command-line interface."""

from __future__ import annotations

import sys

from defi_ws.cli import main

sys.exit(main())
