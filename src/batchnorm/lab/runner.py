"""Run lab experiments: build each one's config at a scale, cache its result keyed by config, code and library
versions (so an interrupted run resumes where it stopped and a changed package never reuses a stale result),
validate cache entries on read, write results atomically, show progress, rebuild the report.

The cache lives in DIR/cache/<id>-<key>.json. An entry that does not parse or does not match the result schema
is reported in one line, moved to DIR/cache/rejected/ and recomputed; it never blocks a run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time

from . import progress, scales
from ._io import reproduce_command, write_atomic  # noqa: F401 (also part of this module's names)
from .experiments import EXPERIMENTS, load_experiment
from .protocol import VERDICTS, Result, grid_edge

__all__ = ["SCALES", "config_for", "cache_key", "package_digest", "run_one", "run_all", "versions",
           "write_atomic", "check_output_directory", "validate_entry", "reproduce_command"]

SCALES = ("quick", "default", "full")
# Bump to invalidate every cached result when the meaning of a stored result changes without a code change.
PROTOCOL_VERSION = 2
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../src/batchnorm


def config_for(module, scale: str = "default", data: str | None = None, seeds: int | None = None,
               seed_base: int | None = None):
    """The experiment's Config at `scale` ('quick': module.QUICK overrides, 'full': module.FULL, 'default': the
    dataclass defaults), with the dataset's own settings (`scales.DATA_SCALES`: at the default and full scales, and
    at the quick scale those that change the model or the input) under them, and `data`, `seeds` and `seed_base`
    (the first seed) overriding when given."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    fields = {f.name for f in dataclasses.fields(module.Config)}
    per_data = scales.settings(module.ID, data if data is not None else module.Config().data, scale)
    unknown = sorted(set(per_data) - fields)
    if unknown:
        raise ValueError(f"scales.DATA_SCALES gives {module.ID} settings its Config does not have: {unknown}")
    overrides = dict(per_data)
    overrides.update({"quick": getattr(module, "QUICK", {}), "full": getattr(module, "FULL", {})}.get(scale, {}))
    if data is not None:
        overrides["data"] = data
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        overrides["seeds"] = seeds
    if seed_base is not None:
        if isinstance(seed_base, bool) or not isinstance(seed_base, int) or seed_base < 0:
            raise ValueError(f"seed_base must be an integer >= 0 (the first seed), got {seed_base!r}")
        if seed_base and "seed_base" not in {f.name for f in dataclasses.fields(module.Config)}:
            raise ValueError(f"{module.ID} has no seed_base setting; run it without --seed-base")
        if "seed_base" in {f.name for f in dataclasses.fields(module.Config)}:
            overrides["seed_base"] = seed_base
    return dataclasses.replace(module.Config(), **overrides)


def package_digest(root: str | None = None) -> str:
    """SHA-256 over every .py file of the `batchnorm` package (path and content, in a fixed order): any change
    to a layer, kernel, tool or the lab itself changes it."""
    if root is None:
        return _installed_package_digest()
    digest = hashlib.sha256()
    paths = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        paths += [os.path.join(directory, name) for name in files if name.endswith(".py")]
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _installed_package_digest() -> str:
    return package_digest(_PACKAGE_ROOT)


def _library_versions() -> dict:
    import numba
    import numpy
    import torch

    return {"torch": torch.__version__, "numpy": numpy.__version__, "numba": numba.__version__}


def cache_key(module, cfg) -> str:
    """Hash of the experiment id, its config (including the first seed), the source of the whole `batchnorm`
    package and the versions of torch, numpy and numba: any of them changed never reuses a result."""
    payload = json.dumps({"id": module.ID, "config": dataclasses.asdict(cfg), "code": package_digest(),
                          "versions": _library_versions(), "protocol": PROTOCOL_VERSION},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def versions() -> dict:
    """Software and machine the results come from."""
    import torch

    info = {"python": platform.python_version(), **_library_versions(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch threads": torch.get_num_threads()}
    for name in ("sklearn", "matplotlib", "mnist1d", "mlxtend"):
        try:
            info[name] = getattr(__import__(name), "__version__", "installed")
        except ImportError:
            info[name] = "missing"
    return info


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_entry(data, experiment: str) -> None:
    """Check a cache entry against the result schema; raises ValueError naming the first problem."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("experiment") != experiment:
        raise ValueError(f"it holds experiment {data.get('experiment')!r}, not {experiment!r}")
    if not isinstance(data.get("title"), str):
        raise ValueError("'title' is missing or not a string")
    seconds = data.get("seconds")
    if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"'seconds' must be a finite number >= 0, got {seconds!r}")
    findings = data.get("findings")
    if not isinstance(findings, list) or not findings:
        raise ValueError("'findings' must be a non-empty list (an experiment makes at least one finding)")
    for i, finding in enumerate(findings):
        if not isinstance(finding, dict):
            raise ValueError(f"finding {i} is not an object")
        for key in ("claim", "anchor", "criterion", "evidence", "verdict"):
            if not isinstance(finding.get(key), str):
                raise ValueError(f"finding {i}: {key!r} is missing or not a string")
        if finding["verdict"] not in VERDICTS:
            raise ValueError(f"finding {i}: verdict {finding['verdict']!r} is not one of {', '.join(VERDICTS)}")
        for name in ("effect", "weaker"):
            effect = finding.get(name)
            if effect is None:
                continue
            if not isinstance(effect, dict) or not isinstance(effect.get("name"), str):
                raise ValueError(f"finding {i}: {name!r} must be an object with a name")
            ci = effect.get("ci95")
            if not (_is_number(effect.get("estimate")) and _is_number(effect.get("threshold"))
                    and isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci)):
                raise ValueError(f"finding {i}: {name!r} needs numbers estimate, threshold and ci95 [lo, hi]")
    for key, kind in (("config", dict), ("versions", dict), ("numbers", dict), ("tables", list), ("plots", list),
                      ("notes", list), ("arms", list)):
        if key in data and not isinstance(data[key], kind):
            raise ValueError(f"{key!r} must be a {kind.__name__}")
    for i, plot in enumerate(data.get("plots", [])):
        if not isinstance(plot, dict) or not isinstance(plot.get("lines"), dict):
            raise ValueError(f"plot {i} has no lines")
        for label, line in plot["lines"].items():
            if not isinstance(line, dict) or not isinstance(line.get("x"), list) or not isinstance(
                    line.get("y"), list) or len(line["x"]) != len(line["y"]):
                raise ValueError(f"plot {i}, line {label!r}: x and y must be lists of the same length")


def _load_cached(path: str, module) -> Result:
    """The cached Result at path; raises ValueError (with the reason) for anything unreadable or invalid."""
    if not os.path.isfile(path):
        raise ValueError("it is not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except RecursionError:
        raise ValueError("its JSON is nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"it does not parse ({type(error).__name__}: {error})") from None
    validate_entry(data, module.ID)
    try:
        return Result.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"it is not a result ({type(error).__name__}: {error})") from None


def _reject(path: str, out: str) -> str:
    """Move an invalid cache entry to out/cache/rejected/ (never deleting it); returns its new path."""
    rejected = os.path.join(out, "cache", "rejected")
    os.makedirs(rejected, exist_ok=True)
    target = os.path.join(rejected, f"{os.path.basename(path)}.{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 0
    while os.path.lexists(target + (f".{suffix}" if suffix else "")):
        suffix += 1
    target += f".{suffix}" if suffix else ""
    shutil.move(path, target)
    return target


def check_output_directory(out: str) -> None:
    """Make sure `out` is (or can be made) a writable directory, before any experiment runs."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is not a directory (it names an existing file); give a directory for "
                         f"the report, e.g. --out lab-report")
    try:
        os.makedirs(os.path.join(out, "cache"), exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out!r}: cannot create the report directory ({error.strerror or error}); "
                         f"give a directory you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK) or not os.access(os.path.join(out, "cache"), os.W_OK | os.X_OK):
        raise ValueError(f"--out {out!r} is not writable; give a directory you can write to")




def _set_jobs(jobs: int | None) -> None:
    if jobs is None:
        return
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1 (worker processes), got {jobs!r}")
    from . import jobs as lab_jobs

    lab_jobs.set_workers(jobs)


def run_one(experiment: str, scale: str = "default", data: str | None = None, seeds: int | None = None,
            out: str | None = None, force: bool = False, stream=None, seed_base: int | None = None,
            jobs: int | None = None) -> tuple[Result, bool]:
    """Run (or load from out/cache) one experiment; returns (result, loaded_from_cache).

    Args: experiment: 'E1' .. scale: 'default' ('quick', 'full'). data, seeds, seed_base: Config overrides.
    out: the report directory whose cache/ is used (None: no cache). force: run even if cached.
    jobs: worker processes for the experiment's training runs (None: leave the current setting).
    """
    module = load_experiment(experiment)
    cfg = config_for(module, scale, data, seeds, seed_base)
    _set_jobs(jobs)
    stream = stream if stream is not None else sys.stderr
    path = None
    if out is not None:
        path = os.path.join(out, "cache", f"{module.ID}-{cache_key(module, cfg)}.json")
        if not force and os.path.lexists(path):
            try:
                return _load_cached(path, module), True
            except ValueError as error:
                moved = _reject(path, out)
                stream.write(f"{module.ID}: rejected the cache entry {path} ({error}); moved it to {moved} and "
                             f"running again\n")
    import torch

    from . import jobs as lab_jobs

    threads = torch.get_num_threads()  # every experiment starts with the caller's thread count
    start, cpu_start = time.perf_counter(), lab_jobs.cpu_seconds()
    with progress.bar(f"{module.ID} {module.TITLE}", stream=stream):
        try:
            result = module.run(cfg)
        finally:
            torch.set_num_threads(threads)  # some library calls change it; keep experiments independent
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = lab_jobs.cpu_seconds() - cpu_start
    result.config = dataclasses.asdict(cfg)
    result.config["scale"] = scale
    result.versions = versions()
    if path is not None:
        if os.path.isdir(path):  # an entry replaced by a directory (rejected above unless --force)
            _reject(path, out)
        write_atomic(path, json.dumps(result.to_json(), indent=1, default=str))
    return result, False


def run_all(experiments: list[str] | None = None, scale: str = "default", data: str | None = None,
            seeds: int | None = None, out: str = "lab-report", force: bool = False, stream=None,
            seed_base: int | None = None, jobs: int | None = None) -> list[Result]:
    """Run the experiments in order (all by default), rebuilding out/index.html and out/results.json after each.
    Every batch norm runs on this package's kernels (`jobs.use_own_kernels`)."""
    from .jobs import use_own_kernels
    from .report import write_report

    use_own_kernels()

    stream = stream if stream is not None else sys.stderr
    ids = [e.upper() for e in experiments] if experiments else list(EXPERIMENTS)
    for e in ids:
        if e not in EXPERIMENTS:
            raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {e!r}")
    for e in ids:  # check every setting before any work
        config_for(load_experiment(e), scale, data, seeds, seed_base)
    if jobs is not None:
        _set_jobs(jobs)
    check_output_directory(out)
    results = []
    for e in ids:
        result, cached = run_one(e, scale, data, seeds, out, force, stream, seed_base)
        if cached:
            stream.write(f"{e} {load_experiment(e).TITLE}: cached result ({result.seconds:.1f} s when run)\n")
        for finding in result.findings:
            stream.write(f"    {finding.verdict:>14}: {finding.claim}  [{finding.evidence}]\n")
        edges = [f"{arm['name']} ({grid_edge(arm)}, {arm['lr_chosen']:g})" for arm in result.arms if grid_edge(arm)]
        if edges:
            stream.write(f"    warning: chose an edge of the learning-rate grid: {'; '.join(edges)}\n")
        stream.flush()
        results.append(result)
        write_report(results, out)
    return results
