"""batchnorm: exact, fast batch normalization for PyTorch, its variants and tools, and a lab that tests it.

`batchnorm.reference` (NumPy only) imports without torch; everything else needs torch.
"""

__version__ = "0.1.0"

# The model tools, re-exported lazily: `import batchnorm` (and `batchnorm.reference`) must not import torch.
_TOOLS = ("fold", "FoldReport", "export_onnx", "recalibrate", "RecalibrationReport", "freeze", "unfreeze", "convert",
          "doctor", "DoctorReport", "Finding")


def __getattr__(name: str):
    if name in _TOOLS:
        from . import tools
        return getattr(tools, name)
    raise AttributeError(f"module 'batchnorm' has no attribute {name!r}")
