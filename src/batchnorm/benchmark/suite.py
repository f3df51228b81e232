"""`batchnorm bench`: batch norm timed against a plain copy of the same tensor, ours and torch eager.

For every shape of the suite it times, in the same run and interleaved round by round (so that a noisy,
shared machine slows all of them alike):

    copy        `dst.copy_(x)` into a preallocated tensor of the same shape and layout (the memory floor);
    clone       `x.clone()`: a copy into a fresh tensor, as every layer's output is (shows what allocating
                and first touching new memory costs on this machine; reported, not a target);
    train fwd   `batch_norm(x, rm, rv, w, b, training=True)` (statistics, transform, running update);
    train f+b   the same forward plus `y.backward(dy)` (dx, dweight, dbias);
    eval fwd    `batch_norm(x, rm, rv, w, b, training=False)`;

for this package (`batchnorm.functional.batch_norm`) and for `torch.nn.functional.batch_norm`, and reports each
as a multiple of the copy (the median over rounds of time / copy time of the same round), plus the ours/torch
ratio (median over rounds; below 1: ours is faster), the median absolute times and the fastest rounds.
Each shape is measured in its own fresh process. It also measures the first call in a fresh process (a subprocess that imports the package and runs one
training forward+backward, with the compiled kernels loaded from Numba's disk cache).

Example:
    batchnorm bench                         # the whole suite, 2 threads, float32
    batchnorm bench --shapes 32,64,56,56 60,100 --repeats 20 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._atomic import atomic_write, write_problem
from ._timing import calls_per_round, environment, timer

__all__ = ["Shape", "SUITE", "Row", "calls_per_round", "measure_shape", "measure_shape_isolated", "first_call_seconds", "run_suite",
           "format_table",
           "add_arguments", "run"]


@dataclass(frozen=True)
class Shape:
    """One benchmark case: a tensor shape and whether it is stored channels_last."""

    dims: tuple[int, ...]
    channels_last: bool = False

    def __str__(self) -> str:
        text = "x".join(str(d) for d in self.dims)
        return text + " (channels_last)" if self.channels_last else text


# The standard shape suite of batch-norm benchmarks.
SUITE = (
    Shape((32, 64, 56, 56)), Shape((32, 256, 28, 28)), Shape((32, 1024, 14, 14)), Shape((32, 2048, 7, 7)),
    Shape((64, 64, 112, 112)), Shape((4096, 1024)), Shape((60, 100)), Shape((4, 32, 16, 56, 56)),
    Shape((32, 64, 56, 56), True), Shape((32, 2048, 7, 7), True),
)

MODES = ("train_fwd", "train_fwd_bwd", "eval_fwd")


@dataclass
class Row:
    """Medians (seconds) of one shape, and the medians of the per-round ratios to the copy and ours/torch."""

    shape: str
    megabytes: float
    copy_s: float
    clone_s: float = 0.0
    seconds: dict = field(default_factory=dict)     # "ours/train_fwd" -> median seconds
    x_copy: dict = field(default_factory=dict)      # "ours/train_fwd" -> median over rounds of time / copy time
    min_seconds: dict = field(default_factory=dict)  # fastest round of each (copy and clone included)
    ours_over_torch: dict = field(default_factory=dict)  # "train_fwd" -> median over rounds of ours / torch
    module_over_torch: dict = field(default_factory=dict)  # the same for the modules as users call them
    over_best_peer: dict = field(default_factory=dict)  # ours module / the fastest other contender, per round
    notes: list = field(default_factory=list)  # contenders left out and why


def _make_input(shape: Shape, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape.dims, generator=generator, dtype=dtype) * 2.0 + 0.5
    if shape.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _module_calls(module: torch.nn.Module, x: torch.Tensor, x_grad: torch.Tensor, dy: torch.Tensor) -> dict:
    """The three modes of a batch-norm module called as users call it: `module(x)`, then `.backward(dy)`."""

    def train_fwd():
        module.train()
        module(x)

    def train_fwd_bwd():
        module.train()
        x_grad.grad = None
        module.zero_grad(set_to_none=True)
        module(x_grad).backward(dy)

    def eval_fwd():
        module.eval()
        with torch.no_grad():
            module(x)

    return {"train_fwd": train_fwd, "train_fwd_bwd": train_fwd_bwd, "eval_fwd": eval_fwd}


def _module_for(shape: Shape, cls_name: str, namespace, weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
    dims = {2: "1d", 3: "1d", 4: "2d", 5: "3d"}[len(shape.dims)]
    module = getattr(namespace, cls_name + dims)(shape.dims[1]).to(weight.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    return module


def _jax_calls(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               channels_last: bool) -> dict | None:
    """JAX peers (`jax.jit` of a hand-written BN forward with the running update, and of forward + VJP), or
    None when JAX is not installed. Inputs are converted once; each call waits for its result."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    if x.dtype == torch.float64:
        jax.config.update("jax_enable_x64", True)
    # JAX arrays are row-major: a channels_last tensor is an (N, *spatial, C) array, channel axis last
    channel_axis = -1 if channels_last else 1
    as_jax = (lambda t: jnp.asarray(t.detach().movedim(1, -1).contiguous().numpy())) if channels_last else \
        (lambda t: jnp.asarray(t.detach().contiguous().numpy()))
    xj, dyj = as_jax(x), as_jax(dy)
    ndim = x.dim()
    axes = tuple(a for a in range(ndim) if a != channel_axis % ndim)
    shape = [1] * ndim
    shape[channel_axis] = x.shape[1]
    w, b = jnp.asarray(weight.detach().numpy()).reshape(shape), jnp.asarray(bias.detach().numpy()).reshape(shape)
    rm, rv = jnp.zeros(x.shape[1], xj.dtype), jnp.ones(x.shape[1], xj.dtype)
    count = x.numel() // x.shape[1]

    def normalize(x, w, b):
        mean = x.mean(axes, keepdims=True)
        var = jnp.square(x - mean).mean(axes, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * w + b, mean.reshape(-1), var.reshape(-1)

    @jax.jit
    def train_fwd(x, w, b, rm, rv):
        y, mean, var = normalize(x, w, b)
        return y, 0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * var * (count / (count - 1))

    @jax.jit
    def train_fwd_bwd(x, w, b, dy):
        y, pullback = jax.vjp(lambda x, w, b: normalize(x, w, b)[0], x, w, b)
        return y, pullback(dy)

    @jax.jit
    def eval_fwd(x, w, b, rm, rv):
        return (x - rm.reshape(shape)) * jax.lax.rsqrt(rv.reshape(shape) + 1e-5) * w + b

    return {"train_fwd": lambda: jax.block_until_ready(train_fwd(xj, w, b, rm, rv)),
            "train_fwd_bwd": lambda: jax.block_until_ready(train_fwd_bwd(xj, w, b, dyj)),
            "eval_fwd": lambda: jax.block_until_ready(eval_fwd(xj, w, b, rm, rv))}


def measure_shape(shape: Shape, dtype: torch.dtype = torch.float32, repeats: int = 15, warmup: int = 3,
                  min_round_seconds: float = 0.02, seed: int = 0, peers: bool = False) -> Row:
    """Median times of copy, ours and torch eager on one shape, interleaved round by round.

    Contenders: "ours" and "torch" (the functional forms, `batch_norm(x, rm, rv, w, b, ...)`), "ours module" and
    "torch module" (`BatchNorm2d(C)` called as users call it: `module(x)`, then `.backward(dy)`); with `peers`,
    also "torch.compile" (the compiled torch module) and "jax" (`jax.jit` of BN forward + VJP; left out with a
    note when JAX is not installed).

    Args:
        shape: the case. dtype: torch.float32 (default) or torch.float64.
        repeats: 15, rounds measured after `warmup` (3) unmeasured rounds.
        min_round_seconds: 0.02, each measurement repeats its call until it lasts about this long
            (small shapes), and reports the mean per call of that round.
        seed: 0, seed of the random input.
        peers: False, add torch.compile and JAX.
    """
    from .. import functional
    from .. import nn as ours_nn

    generator = torch.Generator().manual_seed(seed)
    x = _make_input(shape, dtype, generator)
    dy = _make_input(shape, dtype, generator)
    channels = shape.dims[1]
    dst = torch.empty_like(x)
    weight = (torch.rand(channels, generator=generator, dtype=dtype) + 0.5).requires_grad_()
    bias = torch.randn(channels, generator=generator, dtype=dtype).requires_grad_()
    running = {name: (torch.zeros(channels, dtype=dtype), torch.ones(channels, dtype=dtype))
               for name in ("ours", "torch")}
    impls = {"ours": functional.batch_norm, "torch": torch.nn.functional.batch_norm}
    x_grad = x.clone().requires_grad_()

    def calls(name):
        bn = impls[name]
        rm, rv = running[name]

        def train_fwd():
            bn(x, rm, rv, weight, bias, True, 0.1, 1e-5)

        def train_fwd_bwd():
            x_grad.grad = None
            weight.grad = None
            bias.grad = None
            bn(x_grad, rm, rv, weight, bias, True, 0.1, 1e-5).backward(dy)

        def eval_fwd():
            with torch.no_grad():
                bn(x, rm, rv, weight, bias, False, 0.1, 1e-5)

        return {"train_fwd": train_fwd, "train_fwd_bwd": train_fwd_bwd, "eval_fwd": eval_fwd}

    contenders = {name: calls(name) for name in impls}
    contenders["ours module"] = _module_calls(_module_for(shape, "BatchNorm", ours_nn, weight, bias), x, x_grad, dy)
    contenders["torch module"] = _module_calls(_module_for(shape, "BatchNorm", torch.nn, weight, bias), x, x_grad,
                                               dy)
    notes = []
    if peers:
        compiled = torch.compile(_module_for(shape, "BatchNorm", torch.nn, weight, bias))
        contenders["torch.compile"] = _module_calls(compiled, x, x_grad, dy)
        jax_calls = _jax_calls(x, dy, weight, bias, shape.channels_last)
        if jax_calls is None:
            notes.append("jax: not installed (pip install 'batchnorm[bench]'); left out")
        else:
            contenders["jax"] = jax_calls
    fns = {"copy": lambda: dst.copy_(x), "clone": lambda: x.clone()}
    for name, modes in contenders.items():
        for mode, fn in modes.items():
            fns[f"{name}/{mode}"] = fn
    inner = {key: calls_per_round(fn, min_round_seconds) for key, fn in fns.items()}
    samples = {key: [] for key in fns}
    for round_index in range(warmup + repeats):
        for key, fn in fns.items():
            t = timer(fn, inner[key])
            if round_index >= warmup:
                samples[key].append(t)
    medians = {key: statistics.median(v) for key, v in samples.items()}
    copy_s = medians.pop("copy")
    clone_s = medians.pop("clone")
    row = Row(shape=str(shape), megabytes=x.numel() * x.element_size() / 1e6, copy_s=copy_s, clone_s=clone_s,
              seconds=medians, notes=notes)
    row.min_seconds = {key: min(v) for key, v in samples.items()}
    # ratios per round (each against the copy of the same round), then their median: a load that changes
    # between rounds (other processes on the machine) cancels out
    copies = samples["copy"]
    row.x_copy = {key: statistics.median(t / c for t, c in zip(samples[key], copies)) for key in medians}

    def ratio(a: str, b: str) -> float:
        return statistics.median(p / q for p, q in zip(samples[a], samples[b]))

    row.ours_over_torch = {mode: ratio(f"ours/{mode}", f"torch/{mode}") for mode in MODES}
    row.module_over_torch = {mode: ratio(f"ours module/{mode}", f"torch module/{mode}") for mode in MODES}
    # the best peer per round: the fastest of every contender that is not ours, as users call them
    others = [name for name in contenders if name not in ("ours", "torch", "ours module")]
    row.over_best_peer = {mode: statistics.median(
        o / min(samples[f"{name}/{mode}"][i] for name in others)
        for i, o in enumerate(samples[f"ours module/{mode}"])) for mode in MODES}
    return row


_FIRST_CALL_SCRIPT = """
import time
start = time.perf_counter()
import torch
torch.set_num_threads({threads})
import_torch = time.perf_counter() - start
start = time.perf_counter()
import batchnorm.nn as bnn
bn = bnn.BatchNorm2d(8)
x = torch.randn(4, 8, 5, 5, requires_grad=True)
bn(x).sum().backward()
bn.eval()
bn(torch.randn(4, 8, 5, 5))
xl = torch.randn(64, 8, requires_grad=True)
bnn.BatchNorm1d(8)(xl).sum().backward()
print(import_torch, time.perf_counter() - start)
"""


def first_call_seconds(threads: int = 2) -> dict:
    """Seconds to import torch, and then to import this package and run its first calls, in a fresh process.

    The first calls are a BatchNorm2d training forward+backward, an eval forward and a BatchNorm1d (N, C)
    forward+backward; the compiled kernels come from Numba's disk cache (a first run fills it).
    """
    result = subprocess.run([sys.executable, "-c", _FIRST_CALL_SCRIPT.format(threads=threads)],
                            capture_output=True, text=True, check=True)
    import_torch, first_calls = (float(v) for v in result.stdout.split()[-2:])
    return {"import_torch_s": import_torch, "import_and_first_calls_s": first_calls}


def _header(threads: int, dtype: torch.dtype) -> dict:
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "%.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        load = "unknown"
    return {"machine": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "dtype": str(dtype),
            "load_average_at_start": load,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "numba": numba.__version__, "platform": platform.platform(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


_SHAPE_SCRIPT = """
import json, sys, torch
from dataclasses import asdict
from batchnorm import benchmark
torch.set_num_threads({threads})
shape = benchmark.Shape({dims!r}, {channels_last!r})
print(json.dumps(asdict(benchmark.measure_shape(shape, torch.{dtype}, {repeats}, peers={peers!r}))))
"""


def measure_shape_isolated(shape: Shape, dtype: torch.dtype = torch.float32, repeats: int = 15,
                           threads: int = 2, omp_passive: bool = False, peers: bool = False) -> Row:
    """`measure_shape` in a fresh Python process, so that no shape inherits the state (allocator, thread
    pools, caches) that the shapes measured before it left behind. `omp_passive`: the process runs with
    OMP_WAIT_POLICY=PASSIVE (torch's OpenMP threads sleep after a parallel region instead of spinning)."""
    script = _SHAPE_SCRIPT.format(threads=threads, dims=tuple(shape.dims), channels_last=shape.channels_last,
                                  dtype=str(dtype).removeprefix("torch."), repeats=repeats, peers=peers)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env=environment(omp_passive))
    return Row(**json.loads(result.stdout.strip().splitlines()[-1]))


def run_suite(shapes=SUITE, threads: int = 2, dtype: torch.dtype = torch.float32, repeats: int = 15,
              first_call: bool = True, progress=None, omp_passive: bool = False, peers: bool = False) -> dict:
    """Measure every shape, each in its own fresh process (and the fresh-process first call); returns the
    JSON-ready report."""
    rows = []
    for shape in shapes:
        rows.append(measure_shape_isolated(shape, dtype, repeats, threads, omp_passive, peers))
        if progress:
            progress(rows[-1])
    header = _header(threads, dtype)
    header["omp_wait_policy"] = "PASSIVE" if omp_passive else os.environ.get("OMP_WAIT_POLICY", "unset")
    header["peers"] = bool(peers)
    report = {"header": header, "rows": [asdict(r) for r in rows]}
    report["summary"] = _summary(rows)
    if first_call:
        report["first_call"] = first_call_seconds(threads)
    return report


def _summary(rows: list[Row]) -> dict:
    summary = {}
    for mode in MODES:
        ratios = [r.ours_over_torch[mode] for r in rows]
        summary[f"median ours/torch {mode}"] = statistics.median(ratios) if ratios else float("nan")
        modules = [r.module_over_torch[mode] for r in rows if r.module_over_torch]
        if modules:
            summary[f"median ours/torch {mode}, modules"] = statistics.median(modules)
            summary[f"shapes where our module is slower than torch's, {mode}"] = sum(v > 1 for v in modules)
    return summary


def format_table(report: dict) -> str:
    """The report as Markdown: header, one row per shape, the summary and the first-call time."""
    h = report["header"]
    lines = [f"machine: {h['machine']} ({h['logical_cpus']} logical CPUs), threads: {h['threads']}, "
             f"dtype: {h['dtype']}, OMP_WAIT_POLICY: {h.get('omp_wait_policy', 'unset')}, "
             f"load average at start: {h.get('load_average_at_start', '?')}",
             f"python {h['python']}, torch {h['torch']}, numpy {h['numpy']}, numba {h['numba']}; {h['date_utc']} UTC",
             "",
             "Time as a multiple of a plain copy of the same tensor (median over rounds of time / copy time of the "
             "same round; lower is better), and ours/torch (median over rounds):",
             "",
             "| shape | MB | copy (ms) | clone | train fwd ours | torch | ours/torch | train fwd+bwd ours | torch | "
             "ours/torch | eval fwd ours | torch | ours/torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        cells = [r["shape"], f"{r['megabytes']:.2f}", f"{r['copy_s'] * 1e3:.3f}", f"{r['clone_s'] / r['copy_s']:.2f}"]
        for mode in MODES:
            cells += [f"{r['x_copy'][f'ours/{mode}']:.2f}", f"{r['x_copy'][f'torch/{mode}']:.2f}",
                      f"{r['ours_over_torch'][mode]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _peer_lines(report)
    for key, value in report["summary"].items():
        lines.append(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    small = [r for r in report["rows"] if r["megabytes"] < 0.1]
    for r in small:
        lines.append(f"{r['shape']}: absolute medians (us): " + ", ".join(
            f"{key} {value * 1e6:.0f}" for key, value in r["seconds"].items()))
        lines.append(f"{r['shape']}: fastest rounds (us): " + ", ".join(
            f"{key} {value * 1e6:.0f}" for key, value in r["min_seconds"].items() if "/" in key))
    if "first_call" in report:
        fc = report["first_call"]
        lines.append(f"fresh process: import torch {fc['import_torch_s']:.2f} s; then import batchnorm + first "
                     f"training fwd+bwd, eval fwd and (N, C) fwd+bwd {fc['import_and_first_calls_s']:.2f} s")
    return "\n".join(lines)


_PEERS = ("ours module", "torch module", "torch.compile", "jax")


def _peer_lines(report: dict) -> list[str]:
    """The modules as users call them, ours against every peer: median ms and multiple of the copy."""
    rows = [r for r in report["rows"] if r.get("module_over_torch")]
    if not rows:
        return []
    present = [p for p in _PEERS if any(f"{p}/train_fwd" in r["seconds"] for r in rows)]
    lines = ["Modules as users call them (`BatchNorm(C)(x)`, then `.backward(dy)`): median ms (multiple of the "
             "copy), and ours / the fastest other contender (median over rounds; below 1: ours is the fastest):", "",
             "| shape | mode | " + " | ".join(present) + " | ours/best peer |",
             "|---|---|" + "---:|" * (len(present) + 1)]
    for r in rows:
        for mode in MODES:
            cells = [f"{r['seconds'][f'{p}/{mode}'] * 1e3:.3f} ({r['x_copy'][f'{p}/{mode}']:.2f})"
                     if f"{p}/{mode}" in r["seconds"] else "-" for p in present]
            lines.append(f"| {r['shape']} | {mode} | " + " | ".join(cells) + f" | {r['over_best_peer'][mode]:.2f} |")
        lines += [f"{r['shape']}: {note}" for note in r.get("notes", [])]
    return lines + [""]


def _parse_shape(text: str) -> Shape:
    channels_last = text.endswith("cl")
    dims = tuple(int(v) for v in text.removesuffix("cl").strip(",").split(","))
    if len(dims) < 2:
        raise argparse.ArgumentTypeError(f"--shapes expects comma-separated sizes with at least 2 dimensions "
                                         f"(N,C[,spatial...], 'cl' suffix for channels_last), got {text!r}")
    return Shape(dims, channels_last)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", nargs="+", type=_parse_shape, default=None,
                        help="shapes as N,C[,H,W...] with a 'cl' suffix for channels_last, e.g. 32,64,56,56cl "
                             "(default: the standard suite of 10 shapes)")
    parser.add_argument("--threads", type=int, default=2, help="torch (and Numba) thread count (default 2)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default float32")
    parser.add_argument("--repeats", type=int, default=15, help="measured rounds per shape (default 15)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this path")
    parser.add_argument("--no-first-call", action="store_true", help="skip the fresh-process first-call timing")
    parser.add_argument("--fused", action="store_true",
                        help="time BN+ReLU (torch BN then ReLU, our fused BatchNormAct, our plain BN) instead")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of a 16-block conv-BN-activation training step: torch BN+ReLU, "
                             "BatchNormAct, InPlaceABN")
    parser.add_argument("--peers", action="store_true",
                        help="add torch.compile and JAX (jax.jit of BN forward + VJP; pip install 'batchnorm[bench]') "
                             "to the interleaved rounds")
    parser.add_argument("--model", choices=("resnet18",), default=None,
                        help="time a whole network instead: training step and inference of a ResNet-18 with torch's "
                             "BN, ours, ours fused (convert to='fused') and torch.compile")
    parser.add_argument("--size", type=int, default=32, help="--model: input height and width (default 32)")
    parser.add_argument("--batch", type=int, default=64, help="--model: batch size (default 64)")
    parser.add_argument("--no-compile", action="store_true", help="--model: leave out torch.compile")
    parser.add_argument("--omp-passive", action="store_true",
                        help="run the measuring processes with OMP_WAIT_POLICY=PASSIVE (torch's OpenMP threads "
                             "then sleep after each parallel region instead of spinning on the cores)")


def format_fused_header(args: argparse.Namespace) -> str:
    h = _header(args.threads, torch.float32)
    policy = "PASSIVE" if args.omp_passive else os.environ.get("OMP_WAIT_POLICY", "unset")
    return (f"machine: {h['machine']}, threads: {args.threads}, OMP_WAIT_POLICY: {policy}, load average at start: "
            f"{h['load_average_at_start']}; torch {h['torch']}, numba {h['numba']}; {h['date_utc']} UTC\n\n")


def run(args: argparse.Namespace) -> int:
    names = ("threads", "repeats") + (("size", "batch") if args.model else ())
    for name in names:
        if getattr(args, name) < 1:
            print(f"batchnorm bench: error: --{name} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.json and write_problem(args.json) is not None:
        print(f"batchnorm bench: error: --json {args.json!r} {write_problem(args.json)}", file=sys.stderr)
        return 2
    if args.model:
        from . import model as benchmark_model

        report = benchmark_model.measure_model(args.size, args.batch, args.repeats, args.threads,
                                               compile_torch=not args.no_compile)
        print(benchmark_model.format_model_table(report))
        if args.json:
            atomic_write(args.json, json.dumps(report, indent=2))
        return 0
    shapes = tuple(args.shapes) if args.shapes else SUITE
    if args.fused or args.memory:
        from . import fused as benchmark_fused

        report = {}
        if args.fused:
            report["fused"] = benchmark_fused.fused_table(
                shapes, args.threads, args.repeats, args.omp_passive,
                progress=lambda r: print(f"measured {r['shape']}", file=sys.stderr, flush=True))
            print(format_fused_header(args) + benchmark_fused.format_fused(report["fused"]))
        if args.memory:
            report["memory"] = benchmark_fused.memory_table(args.threads)
            print(benchmark_fused.format_memory(report["memory"]))
        report["header"] = _header(args.threads, torch.float32)
        report["header"]["omp_wait_policy"] = "PASSIVE" if args.omp_passive else os.environ.get("OMP_WAIT_POLICY",
                                                                                                 "unset")
        if args.json:
            atomic_write(args.json, json.dumps(report, indent=2))
        return 0
    report = run_suite(shapes, args.threads, getattr(torch, args.dtype), args.repeats,
                       first_call=not args.no_first_call,
                       progress=lambda r: print(f"measured {r.shape}", file=sys.stderr, flush=True),
                       omp_passive=args.omp_passive, peers=args.peers)
    print(format_table(report))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=2))
    return 0
