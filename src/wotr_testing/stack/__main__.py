"""`python -m wotr_testing.stack ...`: the same commands as `wotr stack ...`."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:], prog="python -m wotr_testing.stack"))
