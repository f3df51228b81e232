"""How the lab's files are written and its results reproduced: atomic writes and the command that re-runs an
experiment (used by the runner and the report alike)."""

from __future__ import annotations

import os

from .._atomic import atomic_write


def write_atomic(path: str, data: str | bytes) -> None:
    """Write text (or bytes) to path atomically (`batchnorm._atomic`): the old file or the whole new one, never a
    part; a new file gets the umask's permissions. Creates the directory if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, data)


def reproduce_command(experiment: str, config: dict | None = None) -> str:
    """The command that re-runs `experiment` with the same scale, data and seeds, e.g. 'bash bin/lab E5 --force'."""
    config = config or {}
    parts = ["bash bin/lab", experiment, "--force"]
    scale = config.get("scale", "default")
    if scale in ("quick", "full"):
        parts.append(f"--{scale}")
    if config.get("data", "digits") != "digits":
        parts.append(f"--data {config['data']}")
    if config.get("seed_base"):
        parts.append(f"--seed-base {config['seed_base']}")
    return " ".join(parts)
