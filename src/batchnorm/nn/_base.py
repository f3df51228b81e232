"""`BatchNormBase`: the forward pass that every batch-norm layer of this package shares with torch's modules."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional
from ._checks import check_eps_momentum, check_input_shape
from ._statistics import batch_norm_forward, check_variant_options

__all__ = ["BatchNormBase", "BatchNormMixin", "traced_as_leaf"]


def traced_as_leaf(module: torch.nn.Module, args: tuple):
    """Under `torch.fx` symbolic tracing (args[0] a Proxy): the Proxy of a `call_module` node for this layer, as
    torch's own BatchNorm modules appear in a traced graph (leaves); the GraphModule then calls this layer, so it
    keeps running on this package's kernels. None when not tracing, or when the layer is the traced root itself
    (its forward is then traced through torch's math)."""
    proxy = args[0]
    if not isinstance(proxy, torch.fx.Proxy):
        return None
    tracer = proxy.tracer
    if getattr(tracer, "root", None) is module:
        return None
    while args and args[-1] is None:  # optional trailing arguments left at their default
        args = args[:-1]
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


class BatchNormBase:
    """The forward pass shared by this package's batch-norm modules; listed before torch's `_BatchNorm` class in
    their bases (`class BatchNorm2d(BatchNormBase, torch.nn.BatchNorm2d)`).

    Subclasses set `_input_shapes` (accepted input ranks and their shape names). Everything torch's module
    owns stays torch's: constructor, parameters, buffers, `state_dict` keys, `_version`, `reset_*`, repr.

    Variant keywords (keyword-only, after torch's signature; plain attributes, not in the `state_dict`; at their
    defaults the layer is exactly torch's; the logic is `batchnorm.nn._statistics.batch_norm_forward`):
        virtual_batch_size: None. Ghost batch norm (Hoffer et al. 2017, arXiv 1705.08741): in training, each
            consecutive chunk of that many samples (>= 2) is normalized with its own statistics; the last chunk
            holds the remainder (merged into the one before if it would hold a single value per channel). The
            running statistics are updated once per forward with the mean of all values and the pooled
            within-chunk unbiased variance sum_k n_k var_k / (n - K). Inference is unchanged.
        freeze_stats: False. True normalizes with the running statistics in training too and never updates
            them (nor `num_batches_tracked`); it is an attribute, so it survives `model.train()`. Gradients
            still reach gamma and beta unless their `requires_grad` is off.
        skip_nonfinite: False. True: a training batch whose statistics are not all finite leaves
            `running_mean`, `running_var` and `num_batches_tracked` unchanged, with one warning per layer
            (the output is still computed from that batch).
    """

    _input_shapes: dict[int, str] = {}

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 virtual_batch_size=None, freeze_stats: bool = False, skip_nonfinite: bool = False,
                 **kwargs) -> None:
        if not bias:  # torch's keyword, passed only when used (older torch versions lack it)
            kwargs["bias"] = bias
        check_eps_momentum(type(self).__name__, eps, momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs)
        self.virtual_batch_size = check_variant_options(type(self).__name__, virtual_batch_size, freeze_stats,
                                                        skip_nonfinite, track_running_stats)
        self.freeze_stats = freeze_stats
        self.skip_nonfinite = skip_nonfinite

    def extra_repr(self) -> str:
        text = super().extra_repr()
        for name, default in (("virtual_batch_size", None), ("freeze_stats", False), ("skip_nonfinite", False)):
            value = getattr(self, name, default)
            if value != default:
                text += f", {name}={value}"
        return text

    def _check_input_dim(self, input: Tensor) -> None:
        check_input_shape(self, input)

    def _own(self, name: str):
        """The parameter or buffer `name`, read from the module's own dicts: `nn.Module.__getattr__` costs about
        0.8 us per read, which matters on small inputs. A parametrized layer (`torch.nn.utils.parametrize`)
        has no entry there and is read as an attribute."""
        parameters = self._parameters
        if name in parameters:
            return parameters[name]
        buffers = self._buffers
        return buffers[name] if name in buffers else getattr(self, name)

    def _averaging_factor(self) -> float:
        """The weight of the current batch in the running average; counts the batch as torch does."""
        if self.training and self.track_running_stats:
            count = self._own("num_batches_tracked")
            if count is not None:
                count.add_(1)
                if self.momentum is None:
                    return 1.0 / float(count)
        return 0.0 if self.momentum is None else self.momentum

    def _uses_batch_stats(self) -> bool:
        """Batch statistics in training, and in eval when there are no running buffers (as in torch)."""
        return self.training or (self._own("running_mean") is None and self._own("running_var") is None)

    def _buffers_to_update(self):
        """Running buffers that this forward reads or updates (None when they must be left alone)."""
        if not self.training or self.track_running_stats:
            return self._own("running_mean"), self._own("running_var")
        return None, None

    def _variant_in_use(self) -> bool:
        """True when a variant keyword changes this training forward (they never change inference)."""
        return self.training and (getattr(self, "virtual_batch_size", None) is not None
                                  or getattr(self, "freeze_stats", False) or getattr(self, "skip_nonfinite", False))

    def forward(self, input: Tensor) -> Tensor:
        return self._forward(input, None)

    def _forward(self, input: Tensor, mask) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return self._traced_forward(input, mask)
        self._check_input_dim(input)
        if mask is not None or self._variant_in_use():
            return batch_norm_forward(self, input, mask)
        factor = self._averaging_factor()
        running_mean, running_var = self._buffers_to_update()
        return functional.batch_norm(input, running_mean, running_var, self._own("weight"), self._own("bias"),
                                     self._uses_batch_stats(), factor, self.eps, **self._activation_kwargs())

    def _activation_kwargs(self) -> dict:
        """Keyword arguments naming the activation fused into the transform (none for plain batch norm)."""
        return {}

    def _traced_forward(self, input, *extra):
        """The forward under torch.fx symbolic tracing: a leaf `call_module` node, or (the layer traced as the
        root) torch's own BatchNorm forward followed by the activation, traced op by op."""
        leaf = traced_as_leaf(self, (input,) + extra)
        if leaf is not None:
            return leaf
        if any(t is not None for t in extra) or self._variant_in_use():
            raise TypeError(f"torch.fx cannot trace {type(self).__name__} itself as the root module with a mask or a "
                            f"statistics variant keyword (its training statistics depend on the data): trace a "
                            f"model that contains it (it becomes a leaf call_module node), or use torch.compile")
        y = torch.nn.modules.batchnorm._BatchNorm.forward(self, input)
        kwargs = self._activation_kwargs()
        if kwargs:
            y = functional.torch_activation(y, kwargs["activation"], kwargs["activation_param"])
        return y

    def __prepare_scriptable__(self):
        """`torch.jit.script` compiles an equivalent torch module over the same parameters and buffers (no copy):
        torch's BatchNorm, or a scriptable BatchNorm + activation for the fused-activation layers."""
        from .scripting import scriptable_equivalent

        return scriptable_equivalent(self)


BatchNormMixin = BatchNormBase  # the former name of the base class
