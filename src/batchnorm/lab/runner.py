"""Run lab experiments: build each one's config at a scale, cache its result keyed by config and code (so an
interrupted run resumes where it stopped), write results atomically, show a progress bar, rebuild the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import tempfile
import time

from . import progress
from .experiments import EXPERIMENTS, load_experiment
from .protocol import Result

__all__ = ["SCALES", "config_for", "cache_key", "run_one", "run_all", "versions", "write_atomic"]

SCALES = ("quick", "default", "full")
# Bump to invalidate every cached result (e.g. when the protocol or the shared training loop changes meaning).
PROTOCOL_VERSION = 1


def config_for(module, scale: str = "default", data: str | None = None, seeds: int | None = None,
               seed_base: int | None = None):
    """The experiment's Config at `scale` ('quick': module.QUICK overrides, 'full': module.FULL, 'default': the
    dataclass defaults), with `data`, `seeds` and `seed_base` (the first seed) overriding when given."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    overrides = dict({"quick": getattr(module, "QUICK", {}), "full": getattr(module, "FULL", {})}.get(scale, {}))
    if data is not None:
        overrides["data"] = data
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        overrides["seeds"] = seeds
    if seed_base is not None:
        if isinstance(seed_base, bool) or not isinstance(seed_base, int) or seed_base < 0:
            raise ValueError(f"seed_base must be an integer >= 0, got {seed_base!r}")
        if "seed_base" in {f.name for f in dataclasses.fields(module.Config)}:
            overrides["seed_base"] = seed_base
    return dataclasses.replace(module.Config(), **overrides)


def _source_digest(module) -> str:
    """Digest of the experiment's source and the shared lab code it relies on."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(str(PROTOCOL_VERSION).encode())
    for path in (module.__file__, *(os.path.join(here, n) for n in ("train.py", "models.py", "data.py"))):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def cache_key(module, cfg) -> str:
    """Hash of the experiment id, its config and its code: a changed config or code never reuses a result."""
    payload = json.dumps({"id": module.ID, "config": dataclasses.asdict(cfg), "code": _source_digest(module)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_atomic(path: str, text: str) -> None:
    """Write text to path via a temporary file in the same directory and os.replace (never a partial file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def versions() -> dict:
    """Software and machine the results come from."""
    import numba
    import numpy
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "numba": numba.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch threads": torch.get_num_threads()}
    for name in ("sklearn", "matplotlib", "mnist1d"):
        try:
            info[name] = getattr(__import__(name), "__version__", "installed")
        except ImportError:
            info[name] = "missing"
    return info


def run_one(experiment: str, scale: str = "default", data: str | None = None, seeds: int | None = None,
            out: str | None = None, force: bool = False, stream=None) -> tuple[Result, bool]:
    """Run (or load from out/cache) one experiment; returns (result, loaded_from_cache)."""
    module = load_experiment(experiment)
    cfg = config_for(module, scale, data, seeds)
    path = None
    if out is not None:
        path = os.path.join(out, "cache", f"{module.ID}-{cache_key(module, cfg)}.json")
        if not force and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    cached = Result.from_json(json.load(f))
                if cached.experiment != module.ID:
                    raise ValueError(f"it holds experiment {cached.experiment!r}")
                return cached, True
            except (ValueError, TypeError, KeyError, AttributeError) as error:   # a corrupt entry: run again
                (stream if stream is not None else sys.stderr).write(
                    f"{module.ID}: ignoring the unreadable cache entry {path} ({type(error).__name__}: {error}); "
                    f"running again\n")
    import torch

    threads = torch.get_num_threads()  # every experiment starts with the caller's thread count
    start = time.perf_counter()
    with progress.bar(f"{module.ID} {module.TITLE}", stream=stream if stream is not None else sys.stderr):
        try:
            result = module.run(cfg)
        finally:
            torch.set_num_threads(threads)  # some library calls change it; keep experiments independent
    result.seconds = time.perf_counter() - start
    result.config = dataclasses.asdict(cfg)
    result.config["scale"] = scale
    result.versions = versions()
    if path is not None:
        write_atomic(path, json.dumps(result.to_json(), indent=1, default=str))
    return result, False


def run_all(experiments: list[str] | None = None, scale: str = "default", data: str | None = None,
            seeds: int | None = None, out: str = "lab-report", force: bool = False, stream=None) -> list[Result]:
    """Run the experiments in order (all by default), rebuilding out/index.html after each one."""
    from .report import write_report

    stream = stream if stream is not None else sys.stderr
    ids = [e.upper() for e in experiments] if experiments else list(EXPERIMENTS)
    for e in ids:
        if e not in EXPERIMENTS:
            raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {e!r}")
    results = []
    for e in ids:
        result, cached = run_one(e, scale, data, seeds, out, force, stream)
        if cached:
            stream.write(f"{e} {load_experiment(e).TITLE}: cached result ({result.seconds:.1f}s when run)\n")
        for finding in result.findings:
            stream.write(f"    {finding.verdict:>14}: {finding.claim}  [{finding.evidence}]\n")
        stream.flush()
        results.append(result)
        write_report(results, out)
    return results
