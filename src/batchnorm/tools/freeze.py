"""Persistent freezing of batch norms for fine-tuning: statistics fixed even after `model.train()`."""

from __future__ import annotations

import copy
import warnings

from torch import nn

from ._common import is_batchnorm, replace_everywhere
from .convert import ORIGINAL_ATTRIBUTE, _convert_one, _frozen_dims

__all__ = ["freeze", "unfreeze"]


def _supports_freeze_stats(module: nn.Module) -> bool:
    """True when the layer has this package's `freeze_stats` switch (our BatchNorm and the layers built on it)."""
    from ..nn import BatchNormBase  # here, not at import: the command line loads the tools before the kernels

    return isinstance(module, BatchNormBase) and hasattr(module, "freeze_stats")


def _set_affine_trainable(module: nn.Module, trainable: bool) -> None:
    for name in ("weight", "bias"):
        parameter = getattr(module, name, None)
        if isinstance(parameter, nn.Parameter):
            parameter.requires_grad_(trainable)


def freeze(model: nn.Module, affine_trainable: bool = True, *, inplace: bool = False) -> nn.Module:
    r"""Freeze every batch norm: normalize with the running statistics and never update them, even in training.

    .. math:: y = \frac{x - \mathrm{running\_mean}}{\sqrt{\mathrm{running\_var} + \epsilon}} \gamma + \beta

    in training and in eval. The freeze survives `model.train()` (unlike `.eval()`, which `.train()` undoes, or
    `requires_grad=False`, which does not stop the running statistics from moving). Layers of this package with
    a `freeze_stats` switch get `freeze_stats=True` (they keep their class, their activation and options);
    torch's BatchNorm1d/2d/3d and ours without that switch become `batchnorm.nn.FrozenBatchNorm1d/2d/3d`
    (state dict keys unchanged). Other variants without the switch are left, with a warning.

    Args:
        model: the model; not modified unless `inplace=True` (then layers with the switch change in place and
            the others are replaced in `model`).
        affine_trainable: True: gamma and beta stay trainable (fine-tuning); False: they are frozen too.
        inplace: False.

    Returns:
        The frozen model.

    Shape: unchanged.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> import torch
        >>> from batchnorm.tools import freeze
        >>> model = freeze(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)))
        >>> type(model[1]).__name__
        'FrozenBatchNorm2d'
        >>> _ = model.train()(torch.randn(4, 3, 8, 8))     # training mode, yet ...
        >>> model[1].running_mean.abs().max().item()          # ... the statistics did not move
        0.0

    References:
        Fine-tuning with frozen batch norm as in Detectron and torchvision's FrozenBatchNorm2d; Wu & Johnson 2021,
        arXiv 2105.07576.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze expected model to be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(affine_trainable, bool):
        raise TypeError(f"freeze expected affine_trainable to be True or False, got {affine_trainable!r}")
    if not inplace:
        model = copy.deepcopy(model)
    root = model if is_batchnorm(model) else None
    left = []
    for name, module in list(model.named_modules()):
        if not is_batchnorm(module):
            continue
        if getattr(module, "running_mean", None) is None:
            left.append(f"{name or 'the model'} (no running statistics: track_running_stats=False)")
            continue
        if _supports_freeze_stats(module):
            module.freeze_stats = True
            _set_affine_trainable(module, affine_trainable)
            continue
        if _frozen_dims(module):
            _set_affine_trainable(module, affine_trainable)
            if hasattr(module, "affine_trainable"):
                module.affine_trainable = affine_trainable and getattr(module, "weight", None) is not None
            continue
        new, reason = _convert_one(module, name, "frozen", None, affine_trainable)
        if new is None:
            left.append(f"{name or 'the model'} ({reason})")
            continue
        if module is root:
            root = new
        else:
            replace_everywhere(model, module, new)
    if left:
        warnings.warn(f"freeze left {len(left)} batch norm(s) unfrozen: " + "; ".join(left), stacklevel=2)
    return root if root is not None else model


def unfreeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Undo `freeze`: statistics update again in training, gamma and beta trainable.

    Layers with a `freeze_stats` switch get `freeze_stats=False`; frozen layers become the class they were
    frozen from (when `freeze`/`convert` made them) or this package's `BatchNorm1d/2d/3d`, keeping parameters,
    buffers and training flags. All affine parameters get `requires_grad=True`.

    Args:
        model: the model; not modified unless `inplace=True`.
        inplace: False.

    Returns:
        The unfrozen model.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> import torch
        >>> from batchnorm.tools import freeze, unfreeze
        >>> model = unfreeze(freeze(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))))
        >>> type(model[1]).__name__, model[1].weight.requires_grad
        ('BatchNorm1d', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfreeze expected model to be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    root = model if is_batchnorm(model) else None
    for name, module in list(model.named_modules()):
        if not is_batchnorm(module):
            continue
        if _supports_freeze_stats(module):
            module.freeze_stats = False
            _set_affine_trainable(module, True)
        elif _frozen_dims(module):
            original = getattr(module, ORIGINAL_ATTRIBUTE, (None, 0.1))[0]
            target = "torch" if original is not None and not original.__module__.startswith("batchnorm.") \
                else "batchnorm"
            new, _ = _convert_one(module, name, target, None, None)
            _set_affine_trainable(new, True)
            if module is root:
                root = new
            else:
                replace_everywhere(model, module, new)
    return root if root is not None else model
