"""Float64 NumPy oracles of every formula in this package, forward and backward (no torch import).

  reference             batch norm, its variants, activations, the fused layers and their backward passes
  reference_recurrent   BN-LSTM and LN-LSTM step by step

Public: test your own layers against them. `batchnorm.reference` is this package's `reference` module under its
former name.
"""
