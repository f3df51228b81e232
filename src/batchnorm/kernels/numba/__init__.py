"""The jitted Numba code, one module per family of layers; arrays and scalars in, no torch.

  _loops        the per-value and per-block loops every kernel is built from, and `_compile`
  batch_norm    the four per-channel primitives (stats, affine, grad_sums, grad_input) and the fused
                whole-pass kernels (train_forward, normalize, train_backward) of BN and BN + activation
  add_act       BN + add + activation (the residual join)
  inplace_abn   the backward of in-place activated BN from its output

Every kernel is compiled twice (`_loops._compile`): a serial and a parallel twin. The Python entry points
of `batchnorm.kernels` choose the layout, the twin and the number of blocks.
"""
