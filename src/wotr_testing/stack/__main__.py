"""`python -m wotr_apps.stack ...`: the same commands as `wotr stack ...`."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
