"""batchnorm: exact, fast batch normalization for PyTorch, its variants and tools, and a lab that tests it.

`batchnorm.reference` (NumPy only) imports without torch; everything else needs torch.
"""

__version__ = "0.1.0"
