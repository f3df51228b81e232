"""The BN + add + activation and in-place activated BN entry points under their former module name."""

from .add_act import affine_add_act, grad_add_act  # noqa: F401
from .inplace_abn import grad_input_from_output, grad_sums_from_output  # noqa: F401
