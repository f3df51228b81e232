"""Launch a worker script on several gloo ranks on 127.0.0.1, with a hard time limit (a hang fails the test)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(worker: str, args: list[str], world: int, timeout: float,
                 env: dict[str, str]) -> tuple[list[tuple[int, str]], float]:
    """Run `python tests/helpers/<worker> *args` on `world` ranks (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT set, one thread each, plus `env`); ([(returncode, stderr)] per rank, seconds). Every process is
    killed and the test fails when the ranks have not all finished within `timeout` seconds."""
    port = free_port()
    start = time.monotonic()
    procs = []
    for rank in range(world):
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                        OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **env)
        procs.append(subprocess.Popen([sys.executable, str(HERE / worker), *args], env=rank_env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=max(timeout - (time.monotonic() - start), 0.1))
            results.append((proc.returncode, stderr))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail(f"{worker} {' '.join(args)} on {world} ranks did not finish within {timeout} s (hang)")
    return results, time.monotonic() - start
