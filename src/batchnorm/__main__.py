"""`python -m batchnorm` runs the `batchnorm` command.

`python -m` puts the working directory first on `sys.path`; it is taken off here (as `python -P` would), so a
file in the working directory named like an installed package (`onnx.py`, `numpy.py`) is never imported in
its place. MODEL and data specs still find modules of the working directory (see `batchnorm.tools.cli`).
"""

import os
import sys

if sys.path and (sys.path[0] in ("", ".") or os.path.abspath(sys.path[0]) == os.getcwd()):
    del sys.path[0]

from .cli import main  # noqa: E402

sys.exit(main())
