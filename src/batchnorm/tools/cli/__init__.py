"""Shared parts of the `batchnorm fold|recalibrate|doctor` commands: load a model, its weights and data safely.

Exit codes of these commands: 0 success; 1 `doctor` found problems at or above `--fail-on`; 2 bad input (an
import path that does not resolve, a missing file, weights that do not match the model, unreadable data, data
the model cannot run on, a data function that fails, an output path that cannot be written), always as one line
`batchnorm <command>: error: ...` on stderr. An unexpected internal error prints a traceback (exit 1).
Weights and data files are read with `torch.load(weights_only=True)` (NumPy files with `allow_pickle=False`):
tensors and plain containers only, never arbitrary pickled objects. Output files are written atomically (a
failed write leaves an existing file as it was).

MODEL and `--data` specs `module:name` never let the working directory shadow an installed package: the module
is imported from the installed packages first; only when no installed module has that top-level name is it
looked up in the working directory (added at the end of `sys.path` for that import). `path/to/file.py:name`
loads that file by its path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2


class CommandError(Exception):
    """A problem with the command's input: printed as `batchnorm <command>: error: ...`, exit code 2."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="the model, as module:factory (an importable module, or path/to/file.py) where factory "
                             "is a function returning the torch.nn.Module (or a module instance). Installed "
                             "packages come first: a module of the working directory is used only when no "
                             "installed module has its name")
    parser.add_argument("--weights", metavar="FILE", help="a state_dict saved with torch.save (read with "
                                                          "torch.load(weights_only=True)); checkpoints with a "
                                                          "'state_dict' or 'model' entry work too")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data", metavar="DATA", required=required,
                        help="a .pt file (a tensor of inputs, an (inputs, labels) pair or a dict with 'inputs' and "
                             "'labels'), a .npy/.npz file, or module:function returning an iterable of batches")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="batch size when DATA is a file (default 64)")
    parser.add_argument("--num-batches", type=positive_int, default=None,
                        help="use only this many batches (default: all)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse reports the error in one line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def run_safely(command: str, body, args) -> int:
    """Run `body(args)`; a CommandError becomes a one-line message on stderr and exit code 2."""
    try:
        return int(body(args) or 0)
    except CommandError as error:
        print(f"batchnorm {command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _is_working_directory(entry: str) -> bool:
    return entry in ("", ".") or os.path.abspath(entry) == os.getcwd()


@contextlib.contextmanager
def _working_directory_last():
    """The working directory at the end of sys.path (after every installed package) while the block runs."""
    cwd = os.getcwd()
    added = not any(_is_working_directory(entry) for entry in sys.path)
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            del sys.path[len(sys.path) - 1 - sys.path[::-1].index(cwd)]


def _load_file_module(path: Path, spec: str, what: str):
    """Execute path/to/file.py as a module (under its stem, or a private name if an installed module has it)."""
    if not path.is_file():
        raise CommandError(f"{what} {spec!r}: no such file {str(path)!r}")
    name = path.stem
    if not name.isidentifier() or name in sys.modules or importlib.util.find_spec(name) is not None:
        name = f"_batchnorm_user_{abs(hash(str(path.resolve())))}"        # never shadow an installed module
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        with _working_directory_last():
            loader_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's file failed: report it, do not crash
        del sys.modules[name]
        raise CommandError(f"{what} {spec!r}: importing {str(path)!r} failed: {type(error).__name__}: {error}")
    return module


def _import_object(spec: str, what: str):
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"{what} must be given as module:name (for instance mypackage.models:make_resnet or "
                           f"models.py:make_resnet), got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        module = _load_file_module(Path(module_name), spec, what)
    else:
        try:
            with _working_directory_last():       # installed packages first; the working directory last
                module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise CommandError(f"{what} {spec!r}: cannot import module {module_name!r} ({error}); check the name "
                               f"and run from the directory that contains it (or give path/to/file.py:name)")
        except Exception as error:  # noqa: BLE001
            raise CommandError(f"{what} {spec!r}: importing {module_name!r} failed: {type(error).__name__}: {error}")
    if not hasattr(module, attribute):
        raise CommandError(f"{what} {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def load_model(args):
    """The model named by MODEL, with --weights loaded into it (strictly)."""
    import torch

    factory = _import_object(args.model, "MODEL")
    if isinstance(factory, torch.nn.Module):
        model = factory
    elif callable(factory):
        try:
            with _working_directory_last():
                model = factory()
        except Exception as error:  # noqa: BLE001
            raise CommandError(f"MODEL {args.model!r}: calling the factory failed: {type(error).__name__}: {error}")
    else:
        raise CommandError(f"MODEL {args.model!r} is a {type(factory).__name__}, not a function or a torch.nn.Module")
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"MODEL {args.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if args.weights:
        load_weights(model, args.weights)
    return model


def _load_file(path: str, what: str):
    import torch

    if not Path(path).is_file():
        raise CommandError(f"{what} {path!r}: no such file")
    try:
        with warnings.catch_warnings():           # torch warns about the pickle protocol before refusing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - weights_only refuses anything but tensors and plain containers
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommandError(f"{what} {path!r} could not be read with torch.load(weights_only=True), which accepts "
                           f"only tensors and plain containers (never arbitrary pickled objects): {first}")


def load_weights(model, path: str) -> None:
    import torch

    state = _load_file(path, "--weights")
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"--weights {path!r} holds a {type(state).__name__}, not a state_dict (a dict of "
                           f"tensors): save it with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}          # saved from DistributedDataParallel
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}" + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""))
        raise CommandError(f"--weights {path!r} does not match MODEL {type(model).__name__}: " + "; ".join(parts)
                           + ". Check that the factory builds the architecture the weights were saved from")
    model.load_state_dict(state, strict=True)


def load_data(args) -> list:
    """The batches named by --data: a list of tensors or (inputs, labels) pairs, or the user's iterable."""
    import numpy as np
    import torch

    spec = args.data
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    path = Path(spec)
    if not path.is_file() and ":" in spec and not spec.endswith((".pt", ".pth", ".npy", ".npz")):
        source = _import_object(spec, "--data")
        try:
            with _working_directory_last():
                data = source() if callable(source) else source
        except Exception as error:  # noqa: BLE001
            raise CommandError(f"--data {spec!r}: calling it failed: {type(error).__name__}: {error}")
        if isinstance(data, torch.Tensor):
            return data
        return _guarded_batches(data, spec)
    if not path.is_file():
        raise CommandError(f"--data {spec!r}: no such file")
    if path.suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as error:  # noqa: BLE001
            raise CommandError(f"--data {spec!r} could not be read with numpy.load(allow_pickle=False): {error}")
        if isinstance(loaded, np.ndarray):
            inputs, labels = loaded, None
        else:
            keys = list(loaded.keys())
            inputs_key = next((k for k in ("inputs", "x", "data", "X") if k in keys), keys[0] if keys else None)
            if inputs_key is None:
                raise CommandError(f"--data {spec!r} is an empty .npz file")
            labels_key = next((k for k in ("labels", "y", "targets") if k in keys), None)
            try:   # .npz members are read lazily: an object array or a damaged member fails here
                inputs, labels = loaded[inputs_key], (loaded[labels_key] if labels_key else None)
            except Exception as error:  # noqa: BLE001
                raise CommandError(f"--data {spec!r} could not be read with numpy.load(allow_pickle=False): "
                                   f"{type(error).__name__}: {error}")
        inputs = torch.from_numpy(np.ascontiguousarray(inputs))
        labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))
    else:
        loaded = _load_file(spec, "--data")
        if isinstance(loaded, torch.Tensor):
            inputs, labels = loaded, None
        elif isinstance(loaded, (tuple, list)) and loaded and isinstance(loaded[0], torch.Tensor):
            inputs, labels = loaded[0], (loaded[1] if len(loaded) > 1 else None)
        elif isinstance(loaded, dict):
            inputs = next((loaded[k] for k in ("inputs", "x", "data") if k in loaded), None)
            labels = next((loaded[k] for k in ("labels", "y", "targets") if k in loaded), None)
            if inputs is None:
                raise CommandError(f"--data {spec!r} is a dict without an 'inputs' (or 'x') entry; keys: "
                                   f"{', '.join(map(str, loaded))}")
        else:
            raise CommandError(f"--data {spec!r} holds a {type(loaded).__name__}; expected a tensor of inputs, an "
                               f"(inputs, labels) pair or a dict with 'inputs' and 'labels'")
    if inputs.is_floating_point() and inputs.dtype != torch.float32:
        inputs = inputs.to(torch.float32)
    if labels is not None and labels.shape[0] != inputs.shape[0]:
        raise CommandError(f"--data {spec!r}: {inputs.shape[0]} inputs but {labels.shape[0]} labels")
    size = args.batch_size
    if labels is None:
        return [inputs[i:i + size] for i in range(0, inputs.shape[0], size)]
    return [(inputs[i:i + size], labels[i:i + size]) for i in range(0, inputs.shape[0], size)]


def _guarded_batches(data, spec: str):
    """Iterate over the user's batches; an exception while producing one becomes a one-line CommandError."""
    try:
        iterator = iter(data)
    except TypeError:
        raise CommandError(f"--data {spec!r} returned a {type(data).__name__}, which is not iterable: return a "
                           f"tensor or an iterable of batches (a list, a generator, a DataLoader)")
    index = 0
    while True:
        try:
            with _working_directory_last():
                batch = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - the user's data source failed midway
            raise CommandError(f"--data {spec!r}: producing batch {index} (counting from 0) failed: "
                               f"{type(error).__name__}: {_first_line(error)}")
        yield batch
        index += 1


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _describe_batch(batch) -> str:
    import torch

    tensors = [batch] if isinstance(batch, torch.Tensor) else \
        list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (tuple, list)) else []
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    return f"inputs {tuple(first.shape)} {str(first.dtype).replace('torch.', '')}" if first is not None else \
        type(batch).__name__


def guarded_forward(model_spec: str, data_spec: str):
    """A `forward(model, batch)` for recalibrate/doctor: an exception of the model on a batch (wrong channel
    count, dtype or shape) becomes a one-line CommandError naming the batch's inputs."""
    from .._common import call_model

    def forward(model, batch):
        try:
            return call_model(model, batch)
        except CommandError:
            raise
        except Exception as error:  # noqa: BLE001 - the model cannot run on the user's data
            raise CommandError(f"MODEL {model_spec!r} failed on a --data {data_spec!r} batch of "
                               f"{_describe_batch(batch)}: {type(error).__name__}: {_first_line(error)} (check "
                               f"that the data match the model's input: shape, channels, dtype)") from error
    return forward


def check_output_path(path: str, option: str) -> None:
    """Refuse, before any work, an output path that is a directory, read-only, or in a missing or read-only
    directory."""
    from ..._atomic import write_problem

    problem = write_problem(path)
    if problem is not None:
        raise CommandError(f"{option} {path!r} {problem}")


def write_output(path: str, option: str, write) -> None:
    """Run `write(temporary_path)` and move the file onto `path` atomically; a failed write (full disk, file-size
    limit) is a one-line CommandError and leaves an existing file as it was."""
    from ..._atomic import atomic_path

    try:
        with atomic_path(path) as temporary:
            write(temporary)
    except (OSError, RuntimeError) as error:   # torch's C++ writer reports I/O failures as RuntimeError
        raise CommandError(f"could not write {option} {path!r} ({type(error).__name__}: {_first_line(error)}); "
                           f"the file was left as it was")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise CommandError(f"--input-shape must be positive integers separated by commas (e.g. 1,3,224,224), "
                           f"got {text!r}")
    return shape
