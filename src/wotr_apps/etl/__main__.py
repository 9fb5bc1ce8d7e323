"""`python -m wotr_apps.etl`: the same as `wotr etl`."""

import sys

from .cli import main

sys.exit(main())
