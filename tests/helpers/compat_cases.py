"""The compatibility cases: what a user of torch's BatchNorm does, run on torch's layers and on ours.

Each case is a probe `probe(nn)` where `nn` is a namespace with BatchNorm1d/2d/3d (and, for our layers,
BatchNormAct2d...): `torch.nn` (the control) or `batchnorm.nn`. A probe returns tensors (compared within the
drop-in tolerance) or raises; `tests/nn/test_compat.py` asserts that ours gives torch's outcome: the same values, or
an exception that is an instance of the type torch raised. Cases without a control (`control=False`) are checks of
our own layers (variants torch does not have, or documented differences) and assert what `expect` says.

`render_markdown()` turns this list into docs/compatibility.md; `python tests/helpers/compat_cases.py > docs/compatibility.md`
regenerates the page, and a test checks that the committed page matches.
"""

from __future__ import annotations

import io
import os
import pickle
import copy
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

# how a case runs on our layers
KERNELS = "our kernels"
TORCH_MATH = "falls back to torch's math"
BACKWARD_TORCH = "kernels forward; torch ops in the create_graph backward"
LEAF = "kept as a leaf module (our kernels when run)"
EQUIVALENT = "scripted as an equivalent torch module (same tensors)"
UNSUPPORTED = "not supported"
STRICTER = "stricter than torch"


@dataclass(frozen=True)
class Case:
    name: str
    what: str                # what the user does
    path: str                # how our layers serve it (one of the constants above)
    probe: Callable
    control: bool = True     # run on torch's layers too and compare
    expect: str = "same"     # without a control: "passes" or the exception type name that ours must raise
    note: str = ""

    def __str__(self) -> str:
        return self.name


def _init(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Deterministic non-trivial parameters and running statistics (same for torch's and our layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64).add_(0.5))
                else:
                    t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.5
                            + (1.0 if name.endswith("weight") else 0.0))
    return module


# --------------------------------------------------------------------------------------- models in the tests
class BasicBlock(torch.nn.Module):
    """torchvision's ResNet BasicBlock: conv-BN-ReLU(inplace)-conv-BN, out += identity, ReLU(inplace)."""

    def __init__(self, nn, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                  nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(torch.nn.Module):
    """ResNet-18 (torchvision's layout: 7x7 stem, max-pool, 4 stages of 2 BasicBlocks, average pool, fc)."""

    def __init__(self, nn, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers.append(torch.nn.Sequential(BasicBlock(nn, inplanes, planes, stride),
                                              BasicBlock(nn, planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8 * width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ConvBNReLU(torch.nn.Module):
    def __init__(self, nn, channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def _seeded(factory, seed: int = 0):
    torch.manual_seed(seed)
    return _init(factory(), seed)


# ------------------------------------------------------------------------------------------------- probes
def probe_channels_last_block(nn):
    block = _seeded(lambda: BasicBlock(nn, 8, 8)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last).requires_grad_()
    y = block(x)
    y.square().sum().backward()
    return y, x.grad, block.bn1.weight.grad, block.bn2.bias.grad


def probe_resnet18_channels_last(nn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only add synchronization on a busy machine
    try:
        return _resnet18_steps(nn)
    finally:
        torch.set_num_threads(threads)


def _resnet18_steps(nn):
    model = _seeded(lambda: ResNet18(nn, width=4)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        x = torch.randn(4, 3, 16, 16, generator=g).to(memory_format=torch.channels_last)
        target = torch.randint(0, 10, (4,), generator=g)
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), model.fc.weight.detach(), model.layer4[1].bn2.running_var


def probe_double_backward_constant(nn):
    bn = _seeded(lambda: nn.BatchNorm2d(3)).double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(bn(x).sum() + (bn(x) * torch.randn_like(x)).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.square().sum(), x)
    return gx, ggx


def probe_gradient_penalty(nn):
    critic = _seeded(lambda: torch.nn.Sequential(torch.nn.Linear(5, 6), nn.BatchNorm1d(6), torch.nn.Tanh(),
                                                 torch.nn.Linear(6, 1))).double()
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
    penalty.backward()
    return penalty, critic[0].weight.grad, critic[1].weight.grad


def _gradgradcheck(module, shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [p for p in module.parameters()]
    ok = torch.autograd.gradgradcheck(lambda x_, *p: module(x_), (x, *params), raise_exception=True)
    return torch.tensor(float(ok))


def probe_gradgradcheck_1d(nn):
    return _gradgradcheck(_seeded(lambda: nn.BatchNorm1d(3)).double(), (5, 3))


def probe_gradgradcheck_2d(nn):
    return _gradgradcheck(_seeded(lambda: nn.BatchNorm2d(2)).double(), (3, 2, 2, 2))


def probe_gradgradcheck_3d(nn):
    return _gradgradcheck(_seeded(lambda: nn.BatchNorm3d(2)).double(), (2, 2, 2, 1, 2))


def probe_gradgradcheck_eval(nn):
    return _gradgradcheck(_seeded(lambda: nn.BatchNorm2d(2)).double().eval(), (3, 2, 2, 2))


def probe_gradgradcheck_act(nn):
    return _gradgradcheck(_seeded(lambda: nn.BatchNormAct2d(2, activation="elu")).double(), (3, 2, 2, 2))


def probe_gradgradcheck_add_act(nn):
    layer = _seeded(lambda: nn.BatchNormAddAct2d(2, activation="silu")).double()
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    return torch.tensor(float(torch.autograd.gradgradcheck(lambda a, b, w: layer(a, b), (x, r, layer.weight))))


def probe_gradgradcheck_renorm(nn):
    # r and d are constants in backprop (the paper's stop-gradient): a finite-difference check of the gradient is
    # valid where they are clipped, r = 1/rmax and d = -dmax, which still differ from BatchNorm's 1 and 0
    layer = _seeded(lambda: nn.BatchRenorm2d(2, momentum=0.0, rmax=1.5, dmax=0.05, warmup_steps=0, rmax_steps=0,
                                             dmax_steps=0)).double()
    layer.running_var.fill_(100.0)
    layer.running_mean.fill_(5.0)
    return _gradgradcheck(layer, (3, 2, 2, 2))


def probe_gradgradcheck_ghost(nn):
    return _gradgradcheck(_seeded(lambda: nn.BatchNorm1d(3, virtual_batch_size=3)).double(), (7, 3))


def probe_gradgradcheck_masked(nn):
    layer = _seeded(lambda: nn.BatchNorm1d(3)).double()
    x = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    return torch.tensor(float(torch.autograd.gradgradcheck(lambda a, w: layer(a, mask), (x, layer.weight))))


def probe_inplace_abn_double_backward(nn):
    layer = nn.InPlaceABN2d(2)
    x = torch.randn(3, 2, 2, 2, requires_grad=True)
    y = layer(x * 1.0)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    return gx


def _functional_bn(nn, train: bool, track: bool = True):
    bn = _seeded(lambda: nn.BatchNorm1d(3, track_running_stats=track)).train(train)
    params = {k: v.detach() for k, v in bn.named_parameters()}
    buffers = {k: v.clone() for k, v in bn.named_buffers()}
    return bn, params, buffers


def probe_func_grad(nn):
    bn, params, buffers = _functional_bn(nn, True)
    x = torch.randn(6, 3)
    loss = lambda p: torch.func.functional_call(bn, (p, buffers), (x,)).pow(3).sum()
    grads = torch.func.grad(loss)(params)
    return grads["weight"], grads["bias"], buffers["running_mean"]


def probe_vmap_eval(nn):
    bn, params, buffers = _functional_bn(nn, False)
    xs = torch.randn(4, 6, 3)
    return torch.func.vmap(lambda x: torch.func.functional_call(bn, (params, buffers), (x,)))(xs)


def probe_vmap_train_no_stats(nn):
    bn, params, buffers = _functional_bn(nn, True, track=False)
    xs = torch.randn(4, 6, 3)
    return torch.func.vmap(lambda x: torch.func.functional_call(bn, (params, buffers), (x,)))(xs)


def probe_vmap_train_running_stats(nn):
    bn, params, buffers = _functional_bn(nn, True)
    xs = torch.randn(4, 6, 3)
    return torch.func.vmap(lambda x: torch.func.functional_call(bn, (params, buffers), (x,)))(xs)


def probe_vmap_per_sample_grads(nn):
    bn, params, buffers = _functional_bn(nn, False)
    xs = torch.randn(5, 2, 3)
    loss = lambda p, x: torch.func.functional_call(bn, (p, buffers), (x,)).square().sum()
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    return grads["weight"], grads["bias"]


def probe_jacrev(nn):
    bn, params, buffers = _functional_bn(nn, True)
    x = torch.randn(4, 3)
    return torch.func.jacrev(lambda x_: torch.func.functional_call(bn, (params, buffers), (x_,)))(x)


def probe_jacfwd(nn):
    bn, params, buffers = _functional_bn(nn, True)
    x = torch.randn(4, 3)
    return torch.func.jacfwd(lambda x_: torch.func.functional_call(bn, (params, buffers), (x_,)))(x)


def probe_jvp(nn):
    bn, params, buffers = _functional_bn(nn, True)
    x, t = torch.randn(4, 3), torch.randn(4, 3)
    return torch.func.jvp(lambda x_: torch.func.functional_call(bn, (params, buffers), (x_,)), (x,), (t,))


def probe_forward_ad(nn):
    import torch.autograd.forward_ad as fwAD
    bn = _seeded(lambda: nn.BatchNorm2d(3)).double()
    x, t = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(bn(fwAD.make_dual(x, t)))
        assert out.tangent is not None, "no tangent"
        return out.primal.clone(), out.tangent.clone()


def probe_jacobian_vectorize(nn):
    bn = _seeded(lambda: nn.BatchNorm1d(3)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    return torch.autograd.functional.jacobian(bn, x, vectorize=True)


def probe_fx_trace(nn):
    model = _seeded(lambda: ConvBNReLU(nn))
    graph = torch.fx.symbolic_trace(model)
    ops = [node.op for node in graph.graph.nodes]
    x = torch.randn(2, 3, 5, 5)
    return graph(x), model(x), torch.tensor([len(ops), ops.count("call_module")])


def probe_fx_feature_extractor(nn):
    """torchvision's create_feature_extractor in a few lines: trace, make the BN node an output, recompile."""
    model = _seeded(lambda: ConvBNReLU(nn)).eval()
    traced = torch.fx.symbolic_trace(model)
    bn_node = next(n for n in traced.graph.nodes if n.target == "bn")
    for node in list(traced.graph.nodes):
        if node.op == "output":
            traced.graph.erase_node(node)
    traced.graph.output({"bn": bn_node})
    traced.graph.eliminate_dead_code()
    traced.recompile()
    x = torch.randn(2, 3, 5, 5)
    return traced(x)["bn"], model.bn(model.conv(x))


def probe_jit_script(nn):
    model = _seeded(lambda: ConvBNReLU(nn))
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 5, 5)
    y = scripted(x)  # training: updates the shared running statistics
    scripted.eval()
    return y, scripted(x), model.bn.running_mean, model.bn.num_batches_tracked.float()


def probe_jit_script_act(nn):
    layer = _seeded(lambda: nn.BatchNormAct2d(3, activation="leaky_relu", activation_param=0.2))
    scripted = torch.jit.script(layer)
    x = torch.randn(2, 3, 4, 4)
    expected = F.leaky_relu(F.batch_norm(x, layer.running_mean.clone(), layer.running_var.clone(), layer.weight,
                                         layer.bias, True, 0.1, layer.eps), 0.2)
    return torch.stack([(scripted(x) - expected).abs().max().detach(), torch.tensor(0.0)])


_LOADER = """
import sys, torch
x = torch.load(sys.argv[1])
outputs = [torch.jit.load(sys.argv[2])(x), torch.export.load(sys.argv[3]).module()(x)]
assert not any(name.startswith("batchnorm") for name in sys.modules), "batchnorm was imported"
torch.save(outputs, sys.argv[1] + ".out")
"""


def probe_portable_artifacts(nn):
    model = _seeded(lambda: ConvBNReLU(nn)).eval()
    x = torch.randn(2, 3, 5, 5)
    traced = torch.jit.trace(model, x)
    program = torch.export.export(model, (x,))
    with tempfile.TemporaryDirectory() as tmp:
        x_path, jit_path, export_path = (os.path.join(tmp, name) for name in ("x.pt", "jit.pt", "export.pt2"))
        torch.save(x, x_path)
        torch.jit.save(traced, jit_path)
        torch.export.save(program, export_path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # our package not importable there
        subprocess.run([sys.executable, "-c", _LOADER, x_path, jit_path, export_path], check=True, env=env,
                       capture_output=True, timeout=300)
        loaded = torch.load(x_path + ".out")
    expected = model(x)
    for out in loaded:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    return loaded


def _onnx_run(model, x, dynamo: bool):
    import onnxruntime
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        kwargs = {"dynamo": dynamo}
        if dynamo:
            kwargs["verbose"] = False
        torch.onnx.export(model, (x,), path, **kwargs)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out), model(x)


def probe_onnx_torchscript(nn):
    return _onnx_run(_seeded(lambda: ConvBNReLU(nn)).eval(), torch.randn(2, 3, 5, 5), dynamo=False)


def probe_onnx_dynamo(nn):
    return _onnx_run(_seeded(lambda: ConvBNReLU(nn)).eval(), torch.randn(2, 3, 5, 5), dynamo=True)


def probe_fake_tensor(nn):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        bn = nn.BatchNorm2d(3)
        y = bn(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
        shape, channels_last = y.shape, y.is_contiguous(memory_format=torch.channels_last)
        bn.eval()
        y = bn(torch.randn(5, 3, 2, 2))
    return torch.tensor([*shape, int(channels_last), *y.shape])


def probe_meta(nn):
    bn = nn.BatchNorm2d(3, device="meta")
    y = bn(torch.empty(2, 3, 4, 4, device="meta"))
    return torch.tensor([*y.shape, int(y.device.type == "meta")])


def probe_fuse_modules(nn):
    from torch.ao.quantization import fuse_modules
    model = _seeded(lambda: ConvBNReLU(nn)).eval()
    fused = fuse_modules(copy.deepcopy(model), [["conv", "bn", "relu"]])
    x = torch.randn(2, 3, 5, 5)
    return fused(x), model(x), torch.tensor(float(isinstance(fused.bn, torch.nn.Identity)))


def probe_fuse_conv_bn_eval(nn):
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model = _seeded(lambda: ConvBNReLU(nn)).eval()
    conv = fuse_conv_bn_eval(model.conv, model.bn)
    x = torch.randn(2, 3, 5, 5)
    return conv(x), model.bn(model.conv(x))


def _functional(nn):
    return torch.nn.functional if nn is torch.nn else __import__("batchnorm.functional").functional


def _wrong_size(nn, argument: str, size: int):
    x = torch.rand(2, 10)
    args = {"running_mean": torch.rand(10), "running_var": torch.rand(10) + 0.5}
    kwargs = {}
    if argument in args:
        args[argument] = torch.rand(size)
    else:
        kwargs[argument] = torch.nn.Parameter(torch.rand(size))
    return _functional(nn).batch_norm(x, args["running_mean"], args["running_var"], **kwargs)


def probe_wrong_running_mean(nn):
    return _wrong_size(nn, "running_mean", 9)


def probe_wrong_running_var(nn):
    return _wrong_size(nn, "running_var", 11)


def probe_wrong_weight(nn):
    return _wrong_size(nn, "weight", 9)


def probe_wrong_bias(nn):
    return _wrong_size(nn, "bias", 11)


def probe_wrong_channels(nn):
    bn = nn.BatchNorm2d(4)
    try:
        bn(torch.randn(2, 3, 4, 4))
    except RuntimeError as error:  # code written for torch catches RuntimeError
        raise RuntimeError(f"caught: {error}") from error
    return torch.zeros(1)


def probe_running_mean_requires_grad(nn):
    bn = nn.BatchNorm1d(3)
    bn.running_mean.requires_grad_(True)
    return bn(torch.randn(4, 3))


def probe_running_mean_infinite(nn):
    bn = _seeded(lambda: nn.BatchNorm1d(4)).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([float("inf"), -float("inf"), 0.0, 1.0]))
        bn.weight.abs_()
    return bn(torch.randn(3, 4))


def probe_integer_input(nn):
    return nn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.int64))


def probe_bool_input(nn):
    return nn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.bool))


def probe_complex_input(nn):
    return nn.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.complex64))


def probe_single_value_per_channel(nn):
    return nn.BatchNorm1d(10)(torch.rand(10)[None, :, None])


def probe_state_dict_interchange(nn):
    ours = _seeded(lambda: nn.BatchNorm2d(3))
    theirs = torch.nn.BatchNorm2d(3)
    theirs.load_state_dict(ours.state_dict())
    back = nn.BatchNorm2d(3)
    back.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 4, 4)
    return back(x), theirs(x), back.running_mean


def probe_pickle_deepcopy(nn):
    bn = _seeded(lambda: nn.BatchNorm2d(3))
    restored = pickle.loads(pickle.dumps(bn))
    twin = copy.deepcopy(bn)
    x = torch.randn(2, 3, 4, 4)
    return restored(x), twin(x), bn(x)


def probe_autocast(nn):
    model = _seeded(lambda: ConvBNReLU(nn))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 5, 5))
    return y.float(), torch.tensor(float(y.dtype == torch.bfloat16))


def probe_half_input(nn):
    bn = _seeded(lambda: nn.BatchNorm2d(3))
    return bn(torch.randn(2, 3, 4, 4).to(torch.bfloat16)).float()


def probe_resize_output(nn):
    y = nn.BatchNorm1d(3)(torch.randn(4, 3))
    y.detach().resize_(100, 3)
    return torch.tensor(y.shape)


def probe_bad_eps(nn):
    return nn.BatchNorm2d(3, eps=float("nan")).eps


def probe_bad_momentum(nn):
    return nn.BatchNorm2d(3, momentum=1.5).momentum


def probe_buffers_not_tracked(nn):
    bn = nn.BatchNorm1d(4)
    bn.track_running_stats = False
    before = [t.clone() for t in bn.buffers()]
    bn(torch.rand(32, 4))
    return torch.tensor([float(torch.equal(a, b)) for a, b in zip(before, bn.buffers())])


CASES = [
    Case("channels_last_block", "channels_last ResNet BasicBlock with ReLU(inplace=True) and `out += identity`, "
         "forward + backward", KERNELS, probe_channels_last_block),
    Case("resnet18_channels_last", "ResNet-18 in channels_last, 3 SGD steps (in-place ReLU, residual +=)", KERNELS,
         probe_resnet18_channels_last),
    Case("double_backward_constant", "`create_graph=True` with a constant upstream gradient, then differentiate "
         "the gradient", BACKWARD_TORCH, probe_double_backward_constant),
    Case("gradient_penalty", "WGAN-GP gradient penalty through a BatchNorm1d critic", BACKWARD_TORCH,
         probe_gradient_penalty),
    Case("gradgradcheck_1d", "`gradgradcheck` float64, BatchNorm1d training", BACKWARD_TORCH, probe_gradgradcheck_1d),
    Case("gradgradcheck_2d", "`gradgradcheck` float64, BatchNorm2d training", BACKWARD_TORCH, probe_gradgradcheck_2d),
    Case("gradgradcheck_3d", "`gradgradcheck` float64, BatchNorm3d training", BACKWARD_TORCH, probe_gradgradcheck_3d),
    Case("gradgradcheck_eval", "`gradgradcheck` float64, BatchNorm2d eval", BACKWARD_TORCH, probe_gradgradcheck_eval),
    Case("gradgradcheck_act", "`gradgradcheck` float64, BatchNormAct2d (elu)", BACKWARD_TORCH,
         probe_gradgradcheck_act, control=False, expect="passes"),
    Case("gradgradcheck_add_act", "`gradgradcheck` float64, BatchNormAddAct2d (silu), input and residual",
         BACKWARD_TORCH, probe_gradgradcheck_add_act, control=False, expect="passes"),
    Case("gradgradcheck_renorm", "`gradgradcheck` float64, BatchRenorm2d with active r, d", BACKWARD_TORCH,
         probe_gradgradcheck_renorm, control=False, expect="passes"),
    Case("gradgradcheck_ghost", "`gradgradcheck` float64, ghost batch norm (virtual_batch_size=3)", BACKWARD_TORCH,
         probe_gradgradcheck_ghost, control=False, expect="passes"),
    Case("gradgradcheck_masked", "`gradgradcheck` float64, masked BatchNorm1d", BACKWARD_TORCH,
         probe_gradgradcheck_masked, control=False, expect="passes"),
    Case("inplace_abn_double_backward", "double backward through InPlaceABN2d", UNSUPPORTED,
         probe_inplace_abn_double_backward, control=False, expect="RuntimeError",
         note="its input is overwritten, so no graph of the gradient can be built; the error names "
              "BatchNormAct2d (same parameters) as the way out. SyncBatchNorm across processes refuses the same way"),
    Case("func_grad", "`torch.func.grad` over `functional_call` (training)", TORCH_MATH, probe_func_grad),
    Case("vmap_eval", "`torch.func.vmap` in eval", TORCH_MATH, probe_vmap_eval),
    Case("vmap_train", "`torch.func.vmap` in training, track_running_stats=False", TORCH_MATH,
         probe_vmap_train_no_stats),
    Case("vmap_train_running_stats", "`vmap` in training with running statistics (torch refuses: in-place "
         "update of an unbatched buffer)", TORCH_MATH, probe_vmap_train_running_stats),
    Case("vmap_per_sample_grads", "per-sample gradients: `vmap(grad(...))`", TORCH_MATH, probe_vmap_per_sample_grads),
    Case("jacrev", "`torch.func.jacrev`", TORCH_MATH, probe_jacrev),
    Case("jacfwd", "`torch.func.jacfwd`", TORCH_MATH, probe_jacfwd),
    Case("jvp", "`torch.func.jvp`", TORCH_MATH, probe_jvp),
    Case("forward_ad", "forward-mode AD with `torch.autograd.forward_ad` dual tensors", TORCH_MATH,
         probe_forward_ad),
    Case("jacobian_vectorize", "`torch.autograd.functional.jacobian(vectorize=True)`", TORCH_MATH,
         probe_jacobian_vectorize),
    Case("fx_symbolic_trace", "`torch.fx.symbolic_trace` of a model", LEAF, probe_fx_trace),
    Case("fx_feature_extractor", "feature extraction on the fx graph (create_feature_extractor style)", LEAF,
         probe_fx_feature_extractor),
    Case("jit_script", "`torch.jit.script` of a model, trained then evaluated", EQUIVALENT, probe_jit_script),
    Case("jit_script_act", "`torch.jit.script` of BatchNormAct2d", EQUIVALENT, probe_jit_script_act,
         control=False, expect="passes"),
    Case("portable_artifacts", "`torch.jit.trace` and `torch.export` of a model, saved, loaded and run in a fresh "
         "process with only `import torch`", TORCH_MATH, probe_portable_artifacts, control=False, expect="passes",
         note="traced and exported graphs hold torch's standard batch-norm ops; outputs equal the eager model's "
              "(no torch control: a second fresh process would double the test's time)"),
    Case("onnx_torchscript", "`torch.onnx.export(dynamo=False)`, run in onnxruntime", TORCH_MATH,
         probe_onnx_torchscript),
    Case("onnx_dynamo", "`torch.onnx.export(dynamo=True)`, run in onnxruntime", TORCH_MATH, probe_onnx_dynamo),
    Case("fake_tensor", "forward under `FakeTensorMode` (channels_last, train and eval)", TORCH_MATH,
         probe_fake_tensor),
    Case("meta_device", "layer and input on the meta device", TORCH_MATH, probe_meta),
    Case("fuse_modules", "`torch.ao.quantization.fuse_modules(model, [['conv', 'bn', 'relu']])`", KERNELS,
         probe_fuse_modules, note="our layers are registered in torch's fuser mappings"),
    Case("fuse_conv_bn_eval", "`torch.nn.utils.fusion.fuse_conv_bn_eval`", KERNELS, probe_fuse_conv_bn_eval),
    Case("wrong_size_running_mean", "`batch_norm` with a running_mean of 9 for 10 channels", KERNELS,
         probe_wrong_running_mean, note="raises ArgumentShapeError (ValueError and RuntimeError)"),
    Case("wrong_size_running_var", "`batch_norm` with a running_var of 11 for 10 channels", KERNELS,
         probe_wrong_running_var),
    Case("wrong_size_weight", "`batch_norm` with a weight of 9 for 10 channels", KERNELS, probe_wrong_weight),
    Case("wrong_size_bias", "`batch_norm` with a bias of 11 for 10 channels", KERNELS, probe_wrong_bias),
    Case("wrong_channels", "input with the wrong channel count, caught with `except RuntimeError`", KERNELS,
         probe_wrong_channels),
    Case("running_mean_requires_grad", "running_mean with requires_grad=True", KERNELS,
         probe_running_mean_requires_grad),
    Case("running_mean_infinite", "eval with running_mean = +-inf (outputs -+inf)", KERNELS,
         probe_running_mean_infinite),
    Case("integer_input", "int64 input", KERNELS, probe_integer_input,
         note="UnsupportedDtypeError: a TypeError and torch's NotImplementedError"),
    Case("bool_input", "bool input", KERNELS, probe_bool_input),
    Case("complex_input", "complex64 input", KERNELS, probe_complex_input),
    Case("single_value_per_channel", "training on one value per channel", KERNELS, probe_single_value_per_channel),
    Case("state_dict", "state_dict to torch's layer and back", KERNELS, probe_state_dict_interchange),
    Case("pickle_deepcopy", "pickle and deepcopy", KERNELS, probe_pickle_deepcopy),
    Case("autocast", "`torch.autocast('cpu', bfloat16)` around conv + BN", TORCH_MATH, probe_autocast,
         note="bfloat16 inputs run on torch's kernels"),
    Case("bfloat16_input", "bfloat16 input", TORCH_MATH, probe_half_input),
    Case("buffers_not_tracked", "`track_running_stats` switched off after construction", KERNELS,
         probe_buffers_not_tracked),
    Case("resize_output", "growing `resize_` of an output", UNSUPPORTED, probe_resize_output, control=False,
         expect="RuntimeError", note="outputs live in NumPy-allocated memory, which torch cannot resize; "
                                     "`out.clone()` gives a resizable copy"),
    Case("eps_nan", "`BatchNorm2d(3, eps=nan)`", STRICTER, probe_bad_eps, control=False, expect="ValueError",
         note="torch accepts it and normalizes to NaN; ours refuses eps <= 0 and non-finite eps"),
    Case("momentum_out_of_range", "`BatchNorm2d(3, momentum=1.5)`", STRICTER, probe_bad_momentum, control=False,
         expect="ValueError", note="torch accepts it; ours refuses momentum outside [0, 1] (None is allowed)"),
]


def render_markdown(cases=CASES) -> str:
    """docs/compatibility.md from the case list."""
    controlled = [c for c in cases if c.control]
    lines = [
        "# Compatibility with torch's BatchNorm",
        "",
        "<!-- generated by `python tests/helpers/compat_cases.py > docs/compatibility.md`; edit the cases, not this page -->",
        "",
        "Each row is a test (`tests/nn/test_compat.py`). Rows with a torch control run the same code on "
        "`torch.nn.BatchNorm*` and on this package's layers and require the same outcome: the same values "
        "within the drop-in tolerance, or an exception of the type torch raises. Rows without one check our "
        f"own layers. {len(controlled)} of the {len(cases)} cases have a torch control.",
        "",
        "Where this package's kernels cannot serve a call (the contexts listed in "
        "`batchnorm.functional.needs_torch_math`: tracing, export, functorch transforms, forward-mode AD, "
        "fake and meta tensors, other dtypes and devices), the layers compute with torch's own math, so the "
        "results are torch's. A backward run with `create_graph=True` computes its gradients with torch ops, "
        "so higher derivatives are exact.",
        "",
        "| case | what the user does | how our layers serve it | torch control | note |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        control = "yes" if case.control else f"no ({case.expect})"
        lines.append(f"| `{case.name}` | {case.what} | {case.path} | {control} | {case.note} |")
    lines += ["", "## Not supported, and why", ""] + [f"- {item}" for item in LIMITATIONS] + [""]
    return "\n".join(lines)


LIMITATIONS = [
    "Growing an output with `resize_` (or an `out=` that needs a resize): outputs live in NumPy-allocated memory, "
    "which torch marks non-resizable. `y.clone()` gives a resizable copy.",
    "Double backward through InPlaceABN (its input is overwritten) and through SyncBatchNorm across processes "
    "(its gradient reduces sums outside autograd): both raise a RuntimeError naming the layer to use instead "
    "(BatchNormAct, BatchNorm). Every other layer's create_graph backward is torch ops and exact.",
    "`torch.jit.script` compiles BatchNorm1d/2d/3d and BatchNormAct1d/2d/3d (as torch modules over the same "
    "tensors); variant keywords and the other layers raise a TypeError pointing to `torch.jit.trace`, "
    "`torch.export` or `torch.compile`, which work for every layer.",
    "`torch.fx.symbolic_trace` of a model keeps our layers as leaf `call_module` nodes, like torch's; tracing a "
    "layer itself as the root works for the plain and fused-activation layers, and raises a TypeError for a "
    "layer with a data-dependent training path (variant keywords, BatchRenorm in training).",
    "`fuse_modules` fuses (Conv, BN[, ReLU]) and (Linear, BN) in eval mode; QAT fusion in training mode and "
    "(BN, ReLU) pairs build torch's intrinsic modules, which accept only torch's BatchNorm class.",
    "FX graph-mode quantization (`prepare_fx`/`convert_fx`) runs, but its fusion patterns match torch's "
    "BatchNorm class only, so our BN stays a float module after a quantized conv instead of being folded into "
    "it; `batchnorm.tools.convert(model, to='torch')` first gives torch's fused result.",
    "Masked BatchNorm1d (`forward(x, mask)`) under FakeTensorMode or on the meta device: the valid positions are "
    "selected by boolean indexing, a data-dependent shape.",
    "Stricter than torch: constructors refuse eps <= 0, non-finite eps and momentum outside [0, 1] "
    "(ValueError), where torch accepts them and then normalizes with NaN or drifting statistics.",
]


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
