"""`python -m batchnorm` runs the `batchnorm` command."""

import sys

from .cli import main

sys.exit(main())
