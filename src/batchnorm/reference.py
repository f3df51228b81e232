"""The float64 NumPy oracle under its former name: every public name of `batchnorm.testing.reference`."""

from .testing.reference import *  # noqa: F401,F403
from .testing.reference import __all__  # noqa: F401
