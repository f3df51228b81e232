"""Batch-norm modules: drop-in replacements for torch.nn and the layers built on the same core."""

from .activated import (BatchNormAct1d, BatchNormAct2d, BatchNormAct3d, BatchNormAddAct1d, BatchNormAddAct2d,
                        BatchNormAddAct3d, InPlaceABN1d, InPlaceABN2d, InPlaceABN3d)
from ._base import BatchNormBase, BatchNormMixin  # noqa: F401  (the base class of every layer, for subclassing)
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from .recurrent import BNLSTM, LNLSTM
from .renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from .sync import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d", "BatchNormAddAct1d", "BatchNormAddAct2d",
           "BatchNormAddAct3d", "InPlaceABN1d", "InPlaceABN2d", "InPlaceABN3d", "SyncBatchNorm", "convert_sync_batchnorm",
           "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d",
           "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d",
           "BNLSTM", "LNLSTM"]
