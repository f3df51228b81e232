"""Model tools around batch norm: fold, export, recalibrate, freeze, convert, doctor."""

from .fold import FoldReport, fold

__all__ = ["fold", "FoldReport"]
