"""Model tools around batch norm: fold, export to ONNX, recalibrate, freeze, convert, doctor.

    fold(model, example_inputs=None) -> (folded model, FoldReport)
    export_onnx(model, example_inputs, path) -> FoldReport
    recalibrate(model, data, num_batches=None) -> (model, RecalibrationReport)
    freeze(model, affine_trainable=True) / unfreeze(model) -> model
    convert(model, to="batchnorm" | "fused" | "torch" | "sync" | "frozen" | "groupnorm", num_groups=None) -> model
    fuse_activations(model) -> (model with BN + activation fused, FuseReport)
    doctor(model, data=None) -> DoctorReport

Each works on a copy of the model (except `recalibrate`, in place by default, as its purpose is to update the
running buffers; `inplace=False` gives a copy), restores every flag it changes, and reports what it did and did not.
"""

from .convert import convert
from .doctor import DoctorReport, Finding, doctor
from .fold import FoldReport, fold
from .freeze import freeze, unfreeze
from .fuse import FuseReport, fuse_activations
from .onnx_export import export_onnx
from .recalibrate import RecalibrationReport, recalibrate

__all__ = ["fold", "FoldReport", "export_onnx", "recalibrate", "RecalibrationReport", "freeze", "unfreeze",
           "convert", "fuse_activations", "FuseReport", "doctor", "DoctorReport", "Finding"]
