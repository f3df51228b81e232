"""Swap batch-norm implementations in a model: torch's <-> ours, sync, frozen, GroupNorm."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ._common import is_batchnorm, replace_everywhere

__all__ = ["convert", "TARGETS"]

TARGETS = ("batchnorm", "fused", "torch", "sync", "frozen", "groupnorm")
_TORCH_PLAIN = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
# remembered on a frozen layer made by `convert`/`freeze`, so that `unfreeze` can bring the original class back
ORIGINAL_ATTRIBUTE = "_batchnorm_tools_original"


def _ours():
    import batchnorm.nn as ours
    return ours


def _ours_plain() -> dict:
    ours = _ours()
    return {ours.BatchNorm1d: 1, ours.BatchNorm2d: 2, ours.BatchNorm3d: 3}


def _frozen_classes() -> dict:
    """Our FrozenBatchNorm1d/2d/3d -> 1/2/3."""
    ours = _ours()
    return {ours.FrozenBatchNorm1d: 1, ours.FrozenBatchNorm2d: 2, ours.FrozenBatchNorm3d: 3}


def _frozen_dims(module: nn.Module) -> int | None:
    """1, 2 or 3 for a frozen batch norm (ours or torchvision's FrozenBatchNorm2d), else None."""
    name = type(module).__name__
    if name.startswith("FrozenBatchNorm") and name[-2:] in ("1d", "2d", "3d") and hasattr(module, "running_mean"):
        return int(name[-2])
    return None


def _factory(module: nn.Module) -> dict:
    reference = module.running_mean if getattr(module, "running_mean", None) is not None else module.weight
    if reference is None:
        return {}
    return {"device": reference.device, "dtype": reference.dtype}


def _copy_state(old: nn.Module, new: nn.Module) -> None:
    """Copy parameters and buffers with the same names, their requires_grad flags, and the training flag."""
    old_state = old.state_dict()
    new_state = new.state_dict()
    with torch.no_grad():
        for key, value in new_state.items():
            if key in old_state and old_state[key] is not None and old_state[key].shape == value.shape:
                value.copy_(old_state[key])
    old_params = dict(old.named_parameters(recurse=False))
    for name, parameter in new.named_parameters(recurse=False):
        if name in old_params:
            parameter.requires_grad_(old_params[name].requires_grad)
        elif name == "bias":     # ours with bias=False -> a layer that always has beta: a fixed zero beta
            with torch.no_grad():
                parameter.zero_()
            parameter.requires_grad_(False)
    new.train(old.training)


def _as_batchnorm(old: nn.Module, cls, frozen_source: bool) -> nn.Module:
    """A new `cls` batch norm with the settings, parameters, buffers and flags of `old`."""
    features = old.running_mean.numel() if getattr(old, "running_mean", None) is not None else old.num_features
    weight = getattr(old, "weight", None)
    if frozen_source:
        momentum = getattr(old, ORIGINAL_ATTRIBUTE, (None, 0.1))[1]
        track = True
    else:
        momentum, track = old.momentum, old.track_running_stats
    kwargs = dict(eps=old.eps, momentum=momentum, affine=weight is not None, track_running_stats=track,
                  **_factory(old))
    if weight is not None and getattr(old, "bias", None) is None and cls.__module__.startswith("batchnorm."):
        kwargs["bias"] = False
    new = cls(features, **kwargs)
    if hasattr(old, "process_group") and hasattr(new, "process_group"):
        new.process_group = old.process_group
    _copy_state(old, new)
    return new


def _to_frozen(old: nn.Module, dims: int, affine_trainable) -> nn.Module | None:
    classes = {d: cls for cls, d in _frozen_classes().items()}
    if dims not in classes:
        raise RuntimeError("convert(to='frozen') needs batchnorm.nn.FrozenBatchNorm1d/2d/3d, which this installation "
                           "does not have")
    weight = getattr(old, "weight", None)
    trainable = (weight is not None and weight.requires_grad) if affine_trainable is None else \
        bool(affine_trainable) and weight is not None
    frozen = classes[dims].from_batchnorm(old, affine_trainable=trainable)
    frozen.train(old.training)
    setattr(frozen, ORIGINAL_ATTRIBUTE, (type(old), getattr(old, "momentum", 0.1)))
    return frozen


def _to_groupnorm(old: nn.Module, name: str, num_groups) -> nn.Module:
    features = old.running_mean.numel() if getattr(old, "running_mean", None) is not None else old.num_features
    if features % num_groups:
        raise ValueError(f"convert(to='groupnorm') needs num_groups to divide the channels of every batch norm, got "
                         f"num_groups={num_groups} for {name or 'the model'} with {features} channels: pick a "
                         f"common divisor of the channel counts")
    weight = getattr(old, "weight", None)
    group_norm = nn.GroupNorm(num_groups, features, eps=old.eps, affine=weight is not None, **_factory(old))
    _copy_state(old, group_norm)
    return group_norm


def _convert_one(old: nn.Module, name: str, to: str, num_groups, affine_trainable):
    """(new module, '') or (None, reason it is left)."""
    ours = _ours()
    ours_plain = _ours_plain()
    torch_dims = _TORCH_PLAIN.get(type(old))
    ours_dims = ours_plain.get(type(old))
    frozen_dims = _frozen_dims(old)
    ours_sync = getattr(ours, "SyncBatchNorm", None)
    is_torch_sync = type(old) is nn.SyncBatchNorm
    is_ours_sync = ours_sync is not None and type(old) is ours_sync
    if not (torch_dims or ours_dims or frozen_dims or is_torch_sync or is_ours_sync):
        if to == "batchnorm" and type(old).__module__.startswith("batchnorm."):
            return old, ""                 # one of our variants already: nothing to convert
        return None, (f"{type(old).__name__} is a batch-norm variant with its own behaviour; a plain layer would "
                      f"compute something else")
    original = getattr(old, ORIGINAL_ATTRIBUTE, (None, 0.1))[0]
    if to == "batchnorm":
        if ours_dims or is_ours_sync:
            return old, ""
        if is_torch_sync:
            return _as_batchnorm(old, ours_sync, False), ""
        dims = torch_dims or frozen_dims
        cls = original if frozen_dims and original in ours_plain else {d: c for c, d in ours_plain.items()}[dims]
        return _as_batchnorm(old, cls, bool(frozen_dims)), ""
    if to == "torch":
        if torch_dims or is_torch_sync:
            return old, ""
        if is_ours_sync:
            return _as_batchnorm(old, nn.SyncBatchNorm, False), ""
        dims = ours_dims or frozen_dims
        return _as_batchnorm(old, {d: c for c, d in _TORCH_PLAIN.items()}[dims], bool(frozen_dims)), ""
    if to == "frozen":
        if frozen_dims:
            return old, ""
        if getattr(old, "running_mean", None) is None:
            return None, "no running statistics to freeze (track_running_stats=False)"
        if is_torch_sync or is_ours_sync:
            return None, "a SyncBatchNorm does not say whether it is 1d, 2d or 3d: convert it to BatchNorm first"
        return _to_frozen(old, torch_dims or ours_dims, affine_trainable), ""
    if to == "groupnorm":
        return _to_groupnorm(old, name, num_groups), ""
    raise AssertionError(to)  # unreachable: `to` is validated by convert


def convert(model: nn.Module, to: str, *, num_groups: int | None = None, process_group=None,
            affine_trainable: bool | None = None) -> nn.Module:
    r"""A copy of `model` with its batch-norm layers swapped for another implementation.

    The normalization itself is unchanged for the batch-norm targets,
    y = (x - mean) / sqrt(var + eps) * gamma + beta, and for "groupnorm" the statistics come per sample and
    group of channels instead (GroupNorm, Wu & He 2018).

    Args:
        model: the model (a single batch-norm layer works too); it is not modified.
        to: "batchnorm" (torch's BatchNorm1d/2d/3d and SyncBatchNorm -> ours, frozen -> ours),
            "fused" (as "batchnorm", then each batch norm followed by an activation, or by a residual add and
            an activation, becomes one `BatchNormAct`/`BatchNormAddAct` layer: `tools.fuse.fuse_activations`;
            the result is a `torch.fx.GraphModule` with the same submodule names and state_dict),
            "torch" (ours -> torch's, frozen -> torch's; the frozen behaviour is lost),
            "sync" (`batchnorm.nn.convert_sync_batchnorm`: torch's and ours -> our SyncBatchNorm),
            "frozen" (-> `batchnorm.nn.FrozenBatchNorm1d/2d/3d`: running statistics fixed in training too),
            "groupnorm" (-> `torch.nn.GroupNorm(num_groups, C)`, gamma and beta kept; statistics do not carry).
        num_groups: None; required for "groupnorm" (it must divide every layer's channel count).
        process_group: None (WORLD); for "sync".
        affine_trainable: None; for "frozen": whether gamma and beta stay trainable (None keeps each layer's
            `requires_grad`).

    Returns:
        The new model. Parameters, running buffers, `num_batches_tracked`, `requires_grad` and training flags
        carry over where the target has them. Batch-norm variants with their own behaviour (renorm, fused
        activation, ...) are left as they are, with a warning naming them.

    Shape: unchanged.

    Raises:
        ValueError: an unknown ``to``, or ``to="groupnorm"`` without a valid ``num_groups``.
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> import torch
        >>> import batchnorm.nn
        >>> from batchnorm.tools import convert
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> ours = convert(model, to="batchnorm")
        >>> isinstance(ours[1], batchnorm.nn.BatchNorm2d)
        True
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(ours(x), model(x), atol=1e-6)
        True
        >>> back = convert(ours, to="torch")      # round trip: same state_dict, same outputs
        >>> type(back[1]) is torch.nn.BatchNorm2d
        True
    """
    if to not in TARGETS:
        raise ValueError(f"convert got to={to!r}; expected one of {', '.join(TARGETS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expected model to be a torch.nn.Module, got {type(model).__name__}")
    if to == "groupnorm" and (not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1):
        raise ValueError(f"convert(to='groupnorm') needs num_groups, a positive integer that divides every layer's "
                         f"channel count, got num_groups={num_groups!r}: for instance num_groups=32 (Wu & He 2018)")
    if to == "fused":
        from .fuse import fuse_activations

        return fuse_activations(convert(model, to="batchnorm"))[0]
    model = copy.deepcopy(model)
    if to == "sync":
        return _ours().convert_sync_batchnorm(model, process_group)
    if is_batchnorm(model):
        new, reason = _convert_one(model, "", to, num_groups, affine_trainable)
        if new is None:
            warnings.warn(f"convert(to={to!r}) left the layer as it is: {reason}", stacklevel=2)
            return model
        return new
    left = []
    done: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules()):
        if not is_batchnorm(module) or id(module) in done:
            continue
        new, reason = _convert_one(module, name, to, num_groups, affine_trainable)
        if new is None:
            left.append(f"{name} ({reason})")
            continue
        done[id(module)] = new
        if new is not module:
            replace_everywhere(model, module, new)
    if left:
        warnings.warn(f"convert(to={to!r}) left {len(left)} layer(s) as they are: " + "; ".join(left), stacklevel=2)
    return model
