"""Compilation flags and routing thresholds for the Numba kernels, in one place, and every environment variable
the package reads, parsed here: a bad value raises `ConfigurationError` naming the variable, its value and the
accepted range, at import.

    BATCHNORM_THREADING_LAYER        Numba threading layer tried first: omp, workqueue or tbb (default: omp)
    BATCHNORM_PARALLEL_MIN_ELEMENTS  inputs smaller than this run single-threaded: an integer >= 0 (32768)
    BATCHNORM_POOL_MB                cap of the output pool in MiB: a finite number >= 0, 0 = off (1024, at
                                     most an eighth of the machine's memory)
    BATCHNORM_BACKEND                who computes plain batch norm: auto, numba or torch (default: auto)
    NUMBA_THREADING_LAYER            Numba's own: when set, this package leaves the choice of layer to Numba
"""

import math
import os


class ConfigurationError(ValueError):
    """An environment variable of this package has a value outside its accepted range."""


def _invalid(name: str, raw: str, accepted: str, default) -> ConfigurationError:
    return ConfigurationError(f"environment variable {name}={raw!r} is invalid: expected {accepted}; unset it for "
                              f"the default {default}")


def _bound(value) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def integer_from_environment(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """The integer in environment variable `name` (written 32768 or 3.2e4), in [minimum, maximum]; `default` when
    unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    accepted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    try:
        value = int(raw)
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            raise _invalid(name, raw, accepted, default) from None
        if not math.isfinite(number) or number != int(number):
            raise _invalid(name, raw, accepted, default)
        value = int(number)
    if value < minimum or (maximum is not None and value > maximum):
        raise _invalid(name, raw, accepted, default)
    return value


def number_from_environment(name: str, default: float, minimum: float = 0.0, maximum: float = 1e9,
                            meaning: str = "") -> float:
    """The finite number in environment variable `name`, in [minimum, maximum]; `default` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    accepted = f"a finite number{meaning} from {_bound(minimum)} to {_bound(maximum)}"
    try:
        value = float(raw)
    except ValueError:
        raise _invalid(name, raw, accepted, default) from None
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise _invalid(name, raw, accepted, default)
    return value


def choice_from_environment(name: str, choices: tuple, default: str | None) -> str | None:
    """The value of environment variable `name`, one of `choices` (case-insensitive); `default` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() not in choices:
        raise _invalid(name, raw, "one of " + ", ".join(choices), default if default is not None else
                       f"(try {', '.join(choices)} in that order)")
    return raw.lower()


# Cache compiled kernels on disk (next to the package, or in NUMBA_CACHE_DIR), so that a fresh process
# loads them instead of compiling again.
CACHE = True

# Floating-point freedoms given to LLVM. 'reassoc' lets it vectorize sums (a different but deterministic
# summation order); 'contract' allows fused multiply-add. No 'nnan'/'ninf': NaN and Inf must propagate
# exactly as IEEE arithmetic says, as in torch.
FASTMATH = {"reassoc", "contract"}

# Numba threading layers in order of preference, used unless the user sets NUMBA_THREADING_LAYER
# (BATCHNORM_THREADING_LAYER puts one layer first). Measured on this project's 2-core machine, one session, the
# same shapes back to back: Numba's OpenMP layer starts a parallel kernel in 2-5 us, 'workqueue' in 100-160 us,
# and a 4M-element kernel right after a torch op took 1.6 ms on OpenMP but 6.4 ms on workqueue; the training
# forward of 32x256x28x28 / 4096x1024 / 32x64x56x56 channels_last took 1.6x / 1.9x / 1.9x a copy on OpenMP
# against 3.5x / 4.3x / 3.7x on workqueue. GNU OpenMP cannot be used in a process forked from one that uses it,
# so the dispatcher runs the serial kernels there.
_LAYERS = ("omp", "workqueue", "tbb")
THREADING_LAYERS = tuple(dict.fromkeys(
    [name for name in [choice_from_environment("BATCHNORM_THREADING_LAYER", _LAYERS, None)] if name] + list(_LAYERS)))

# NUMBA_THREADING_LAYER set by the user: Numba's choice stands and THREADING_LAYERS is not applied.
NUMBA_LAYER_CHOSEN_BY_USER = bool(os.environ.get("NUMBA_THREADING_LAYER", "").strip())

# Tensors with fewer elements than this run on the single-threaded kernels: starting the thread pool costs
# more than it saves on small inputs (the paper's 60x100 MLP is 6,000 elements).
PARALLEL_MIN_ELEMENTS = integer_from_environment("BATCHNORM_PARALLEL_MIN_ELEMENTS", 32768)

# Rows-layout kernels split the rows into blocks that run in parallel: up to BLOCKS_PER_THREAD per thread,
# each of at least MIN_BLOCK_ROWS rows (every block keeps C partial sums in float64).
BLOCKS_PER_THREAD = 4
MIN_BLOCK_ROWS = 16


# Channels-first fused kernels (one block of channels at a time per thread) need this many channels per thread
# to keep the threads evenly busy; below it, the statistics run in parallel over (sample, channel) slices.
FUSED_MIN_CHANNELS_PER_THREAD = 4

# A channel block of the fused channels-first kernels holds about CF_BLOCK_BYTES of x (all samples of its
# channels), so that the second sweep over it reads from the core's L2 cache; small images (7x7, 14x14) get
# many channels per block, read sample by sample in long contiguous runs instead of one short run per channel.
CF_BLOCK_BYTES = 256 * 1024


def channel_blocks(batch: int, channels: int, space: int, itemsize: int, threads: int) -> int:
    """Number of channel blocks for a fused channels-first kernel over an (N, C, S) input."""
    per_block = max(1, CF_BLOCK_BYTES // max(1, batch * space * itemsize))
    blocks = -(-channels // per_block)
    return min(channels, max(blocks, threads * FUSED_MIN_CHANNELS_PER_THREAD))


# Rows kernels sum ROW_FOLD rows at a time in the input's dtype (one vector lane per channel) and fold those
# partial sums into float64: about twice the speed of float64 accumulation, with a relative error of the
# variance around 1e-6 for float32 input even at a +1e4 offset (the data are shifted by the mean of the first
# SHIFT_ROWS rows before summing, so the sums stay small). float64 input stays exact to float64 rounding.
ROW_FOLD = 64
SHIFT_ROWS = 16
# Rows kernels over more than ROW_TILE channels in at most ROW_TILE_MAX_ROWS rows walk the channels ROW_TILE at a
# time, so that a tile's per-channel arrays (partial sums, center, scale, shift) stay in the L1 cache while the
# rows stream past: the training forward of (256, 8192) took 1.02-1.09x torch's time without tiles (arrays of
# 8192 channels spill to L2) and 0.82-0.85x with tiles of 1024, (512, 4096) 1.03 and 0.82 (the kernels alone).
# Elsewhere the tiles lose: their per-row views cost (65536, 16) 1.35x its time, and with many rows the untiled
# loops stream whole rows (module training forward+backward of 64x2048x7x7 channels_last: 0.59-0.67x torch's time
# untiled, 0.84-1.02x tiled).
ROW_TILE = 1024
ROW_TILE_MAX_ROWS = 512


def sample_blocks(batch: int, channels: int, threads: int) -> int:
    """Channel blocks per sample for the channels-first kernels that run over (sample, channel block) pairs:
    whole samples (long contiguous runs) when the batch alone gives every thread BLOCKS_PER_THREAD pairs."""
    return max(1, min(channels, -(-threads * BLOCKS_PER_THREAD // max(batch, 1))))


def row_blocks(rows: int, threads: int) -> int:
    """Number of parallel row blocks for a rows-layout kernel over `rows` rows."""
    return max(1, min(threads * BLOCKS_PER_THREAD, rows // MIN_BLOCK_ROWS))


NJIT_SERIAL = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy")
NJIT_PARALLEL = dict(NJIT_SERIAL, parallel=True)
# Elementwise maps called from the kernels: no 'reassoc', so that LLVM keeps their order of operations.
NJIT_ELEMENTWISE = dict(cache=CACHE, fastmath={"contract"}, nogil=True, error_model="numpy")
# Small helpers called from the kernels (compiled into them).
NJIT_INLINE = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy", inline="always")


# The kernels' outputs reuse the memory of dead outputs of the same size (`pool.py`): blocks of at least
# POOL_MIN_BYTES, at most POOL_BLOCKS_PER_SIZE free blocks per size (a network's layers of one size, whose outputs
# all die when its backward pass ends) and POOL_MAX_BYTES free in all (BATCHNORM_POOL_MB=0 turns the pool off).
# The default cap holds a training step's y and dx of a 205 MB input (64x64x112x112: forward+backward 119 ms with a
# 256 MiB cap, which keeps only one of them, 69 ms with 1 GiB), within an eighth of the machine's memory.
POOL_MIN_BYTES = 1 << 20
POOL_BLOCKS_PER_SIZE = 8


def _default_pool_mb() -> float:
    """1024 MiB, or an eighth of the physical memory when that is less (256 MiB where it cannot be read)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 256.0
    return float(min(1024, memory // (8 << 20)))


POOL_MAX_BYTES = int(number_from_environment("BATCHNORM_POOL_MB", _default_pool_mb(), 0, 1 << 20,
                                                 " of MiB (0 turns the pool off)") * (1 << 20))


# Who computes a plain batch-norm call (BatchNorm1d/2d/3d, BatchNormAct, `functional.batch_norm`) on a CPU
# float tensor outside torch.compile: "numba" (this package's kernels), "torch" (torch's native batch norm,
# then the activation in torch ops) or "auto": torch's for inputs smaller than the crossover below, where its
# lower fixed cost per call wins, the kernels otherwise. Both paths agree within the drop-in tolerances.
# Read on every call, so tests can switch it (`batchnorm.kernels.config.BACKEND = "numba"`).
BACKEND = choice_from_environment("BATCHNORM_BACKEND", ("auto", "numba", "torch"), "auto")

# The crossover, in elements of the input: "auto" sends an input with fewer elements to torch. Keyed by
# (mode, layout, kind): mode "train" (training with autograd), "train_nograd" (training forward without autograd:
# recalibration, `torch.no_grad()`) or "eval"; layout "rows" (2-D inputs and channels_last) or "cf" (contiguous
# (N, C, *spatial)); kind "plain" (batch norm), "act" (an activation fused in, BatchNormAct, against torch's
# batch norm + activation) or "add_act" (BatchNormAddAct).
# Below these sizes torch's lower fixed cost per call wins; above them the kernels' single passes do. Measured
# with 2 threads, float32, the modules as users call them, by `python bench/crossover.py [--fused]` (the runs
# behind these numbers are bench/crossover.md and bench/crossover-fused.md): the smallest power of two from which
# the kernels' time over torch's path, a geometric mean over the shapes of that size and three sweeps, is at most
# 0.95 at every larger size (plain batch norm, training, rows: 1.05 at 2^19, 0.91 at 2^20).
TORCH_BELOW = {
    ("train", "cf", "plain"): 1 << 18,
    ("train", "rows", "plain"): 1 << 20,
    ("train_nograd", "cf", "plain"): 1 << 15,
    ("train_nograd", "rows", "plain"): 1 << 20,
    ("eval", "cf", "plain"): 1 << 23,  # 1.00 at 2^22, the largest size measured: a tie
    ("eval", "rows", "plain"): 1 << 22,
    ("train", "cf", "act"): 1 << 17,
    ("train", "rows", "act"): 1 << 19,
    ("train_nograd", "cf", "act"): 1 << 14,
    ("train_nograd", "rows", "act"): 1 << 20,
    ("eval", "cf", "act"): 1 << 20,
    ("eval", "rows", "act"): 1 << 20,
    # BatchNormAddAct (batch norm + residual add + activation) against torch's bn(x) + residual, relu_: measured
    # by `python bench/crossover_add_act.py` (bench/crossover-add-act.md); training without autograd was not
    # measured separately and takes the eval crossover.
    ("train", "cf", "add_act"): 1 << 19,
    ("train", "rows", "add_act"): 1 << 20,
    ("train_nograd", "cf", "add_act"): 1 << 20,
    ("train_nograd", "rows", "add_act"): 1 << 20,
    ("eval", "cf", "add_act"): 1 << 20,
    ("eval", "rows", "add_act"): 1 << 20,
}
# Training with autograd on a channels-first input with too few channels to give every thread
# FUSED_MIN_CHANNELS_PER_THREAD of them (an input layer: 3 channels) takes the kernels' multi-pass path, whose
# crossover is higher: (64, 3, 32, 32) ran 1.36x torch's time on it, (32, 3, 64, 64) 0.95x, (8, 3, 224, 224) 0.48x.
FEW_CHANNELS_TRAIN_BELOW = 1 << 18
# A rows-layout input with fewer rows than this (N for (N, C), N*H*W for channels_last) goes to torch whatever its
# size: the kernels split the rows between the threads, and (64, 8192) ran 1.42x, (128, 16384) 1.16x torch's time
# for training forward+backward, (256, 8192) 0.64-0.86x, (512, 4096) 0.74x. A channels_last input needs more rows
# (N*H*W): against torch's channels_last kernel, (2, 2048, 14, 14) (392 rows) ran 1.14x and (4, 1024, 10, 10)
# 1.33x, (2, 2048, 16, 16) (512 rows) 0.71x, (32, 2048, 7, 7) 0.62x (`BatchNorm2d` on the kernels over torch's).
ROWS_MIN = 256
ROWS_MIN_CHANNELS_LAST = 512
