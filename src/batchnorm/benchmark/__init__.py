"""`batchnorm bench`: batch norm timed against a plain copy of the same tensor, ours against torch and its peers.

  suite     the shape suite (`batchnorm bench`): ours, torch eager, torch.compile and JAX, per shape
  fused     BN + activation against torch's BN followed by the activation, and the memory of a training step
            with in-place activated BN (`--fused`)
  model     a whole-network training step, ResNet-18 with each batch norm (`--model resnet18`)
  _timing   calls per round, the timer and the subprocess environment that every module shares
"""

from .suite import (SUITE, Row, Shape, __all__, add_arguments, calls_per_round, first_call_seconds,  # noqa: F401
                    format_table, measure_shape, measure_shape_isolated, run, run_suite)
