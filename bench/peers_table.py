"""The README's performance table from a `batchnorm bench --peers --json FILE` run: per shape and mode, our module's
median time and its ratio to each peer's (torch eager's module, torch.compile of it, JAX `jit`); below 1 ours is
faster.

    python bench/peers_table.py bench/peers.json
"""

from __future__ import annotations

import argparse
import json

MODES = (("train_fwd_bwd", "training fwd+bwd"), ("train_fwd", "training fwd"), ("eval_fwd", "eval"))
PEERS = (("torch module", "torch"), ("torch.compile", "compile"), ("jax", "JAX"))


def table(report: dict) -> str:
    """Markdown: one row per shape; for each mode our time (ms) and ours / peer (ratio of medians)."""
    head = ["shape"]
    for _, label in MODES:
        head += [f"{label} ours (ms)"] + [f"/ {peer}" for _, peer in PEERS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in report["rows"]:
        seconds = row["seconds"]
        cells = [row["shape"]]
        for mode, _ in MODES:
            ours = seconds[f"ours module/{mode}"]
            cells.append(f"{ours * 1e3:.3f}")
            for name, _ in PEERS:
                peer = seconds.get(f"{name}/{mode}")
                cells.append(f"{ours / peer:.2f}" if peer else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="the --json file of a `batchnorm bench --peers` run")
    args = parser.parse_args(argv)
    with open(args.json) as handle:
        report = json.load(handle)
    h = report["header"]
    print(f"{h['machine']} ({h['logical_cpus']} logical CPUs), {h['threads']} threads, {h['dtype']}, torch "
          f"{h['torch']}, numba {h['numba']}, load average at start {h['load_average_at_start']}, "
          f"{h['date_utc']} UTC\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
