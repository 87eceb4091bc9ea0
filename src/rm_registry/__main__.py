"""``python -m rm_registry`` (and ``torchrun -m rm_registry``) runs the ``rm-registry`` CLI."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
