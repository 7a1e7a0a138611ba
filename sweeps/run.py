"""Ray Tune sweeps from a checkout: a shim over ``python -m workbench sweep`` (:mod:`workbench.sweep_cli`).

    python sweeps/run.py --config configs/ratdat_phase2.yaml --w 0:1:0.1 --seeds 3

takes the same arguments as ``python -m workbench sweep``; see ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's workbench, when not installed

from workbench.sweep_cli import *  # noqa: E402,F401,F403 (tests and scripts reach build_parser, spec_from_args, ...)
from workbench.sweep_cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
