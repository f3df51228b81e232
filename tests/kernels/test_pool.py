"""The output pool (`batchnorm.kernels.pool`): the kernels' outputs (forward y, backward dx, with or without
autograd) reuse the memory of dead outputs of the same size, never the memory of a live tensor, view, saved
tensor or gradient, and stay exact."""

from __future__ import annotations

import pytest
import torch

from batchnorm import functional
from batchnorm.kernels import config, pool

# 2**19 float32 values = 2 MiB, above config.POOL_MIN_BYTES
SHAPE = (16, 8, 64, 64)


@pytest.fixture(autouse=True)
def empty_pool():
    pool.clear()
    yield
    pool.clear()


def _case(shape=SHAPE, dtype=torch.float32, memory_format=torch.contiguous_format, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]
    x = (torch.randn(shape, generator=generator, dtype=dtype) * 3 + 1).contiguous(memory_format=memory_format)
    stats = (torch.randn(channels, generator=generator, dtype=dtype),
             torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
    affine = (torch.rand(channels, generator=generator, dtype=dtype) + 0.5,
              torch.randn(channels, generator=generator, dtype=dtype))
    return x, stats, affine


def _eval(x, stats, affine):
    with torch.no_grad():
        return functional.batch_norm(x, *stats, *affine, False)


def test_dead_output_memory_serves_the_next_output_and_live_memory_never_does():
    x, stats, affine = _case(seed=1)
    expected = torch.nn.functional.batch_norm(x, *stats, *affine, False)
    first = _eval(x, stats, affine)
    address = first.data_ptr()
    view = first[3]  # a view keeps the block alive
    del first
    assert pool.free_bytes() == 0
    second = _eval(x, stats, affine)
    assert second.data_ptr() != address
    snapshot = view.clone()
    second.fill_(7.0)
    assert torch.equal(view, snapshot)
    del view
    assert pool.free_bytes() == x.numel() * x.element_size()
    third = _eval(x, stats, affine)
    assert third.data_ptr() == address
    assert pool.free_bytes() == 0
    torch.testing.assert_close(third, expected, rtol=1e-5, atol=1e-5)
    assert (second == 7.0).all()


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.channels_last_3d])
def test_pooled_outputs_keep_channels_last_layout_and_values(memory_format):
    shape = SHAPE if memory_format == torch.channels_last else (4, 8, 4, 64, 64)
    x, stats, affine = _case(shape, torch.float64, memory_format, seed=2)
    for _ in range(2):  # the second output comes from the pool
        y = _eval(x, stats, affine)
        assert y.stride() == x.stride() and y.shape == x.shape
        torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, *stats, *affine, False), rtol=1e-12,
                                   atol=1e-12)
        del y


def test_training_without_autograd_uses_the_pool_and_updates_running_statistics():
    x, _, affine = _case(seed=3)
    ours = (torch.zeros(SHAPE[1]), torch.ones(SHAPE[1]))
    theirs = (torch.zeros(SHAPE[1]), torch.ones(SHAPE[1]))
    for _ in range(2):
        with torch.no_grad():
            y = functional.batch_norm(x, *ours, *affine, True)
        torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, *theirs, *affine, True), rtol=1e-5,
                                   atol=1e-5)
        del y
        assert pool.free_bytes() == x.numel() * x.element_size()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_training_steps_reuse_the_outputs_and_gradients_of_the_step_before():
    x, _, affine = _case(seed=4)
    weight, bias = (t.clone().requires_grad_() for t in affine)
    dy = torch.randn(SHAPE, generator=torch.Generator().manual_seed(40))
    block = x.numel() * x.element_size()
    addresses = []
    for step in range(3):
        x_step = x.clone().requires_grad_()
        y = functional.batch_norm(x_step, None, None, weight, bias, True)
        y.backward(dy)
        x_ref = x.clone().requires_grad_()
        torch.nn.functional.batch_norm(x_ref, None, None, weight, bias, True).backward(dy)
        torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, None, None, weight, bias, True), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(x_step.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        assert pool.free_bytes() == 0  # y and x_step.grad are alive: their blocks are not free
        addresses.append({y.data_ptr(), x_step.grad.data_ptr()})
        del y, x_step
        assert pool.free_bytes() == 2 * block
    assert addresses[1] == addresses[0] and addresses[2] == addresses[0]


def test_an_output_saved_by_autograd_is_not_reused_until_its_graph_dies():
    x, stats, affine = _case(seed=6)
    y = functional.batch_norm(x.clone().requires_grad_(), *stats, *affine, False)
    saved = y * y  # autograd saves y for the backward of the product
    address = y.data_ptr()
    del y
    assert pool.free_bytes() == 0
    other = _eval(x, stats, affine)
    assert other.data_ptr() != address
    del saved  # the graph, and with it the saved y, dies
    assert pool.free_bytes() == x.numel() * x.element_size()
    assert _eval(x, stats, affine).data_ptr() == address


def test_small_outputs_are_not_pooled():
    _, stats, affine = _case(seed=7)
    small = _eval(torch.randn(4, 8, 5, 5), stats, affine)
    del small
    assert pool.free_bytes() == 0


def test_pool_caps_free_blocks_per_size_and_in_total(monkeypatch):
    x, stats, affine = _case(seed=5)
    block = x.numel() * x.element_size()
    monkeypatch.setattr(config, "POOL_BLOCKS_PER_SIZE", 2)
    outputs = [_eval(x, stats, affine) for _ in range(3)]
    del outputs
    assert pool.free_bytes() == 2 * block
    pool.clear()
    monkeypatch.setattr(config, "POOL_MAX_BYTES", block - 1)
    _eval(x, stats, affine)  # dies at once, but its block would exceed the cap
    assert pool.free_bytes() == 0
    monkeypatch.setattr(config, "POOL_MAX_BYTES", 0)  # disabled
    _eval(x, stats, affine)
    assert pool.free_bytes() == 0


def test_a_full_pool_releases_the_least_recently_used_sizes_first(monkeypatch):
    x, stats, affine = _case(seed=8)
    larger = torch.cat([x, x])
    block = x.numel() * x.element_size()
    monkeypatch.setattr(config, "POOL_MAX_BYTES", 3 * block)
    outputs = [_eval(x, stats, affine) for _ in range(2)]
    del outputs
    assert pool.free_bytes() == 2 * block
    big = _eval(larger, stats, affine)  # 2 blocks' worth: the two free blocks of the older size make room
    address = big.data_ptr()
    del big
    assert pool.free_bytes() == 2 * block
    assert _eval(larger, stats, affine).data_ptr() == address


def test_the_default_cap_is_a_gibibyte_or_an_eighth_of_the_memory(monkeypatch):
    import os

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": (2 << 30) // 4096}  # a 2 GiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert config._default_pool_mb() == 256
    pages["SC_PHYS_PAGES"] = (64 << 30) // 4096
    assert config._default_pool_mb() == 1024
