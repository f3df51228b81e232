"""`batchnorm lab`: for now the demo of the paper's network with and without batch norm."""

from __future__ import annotations

import argparse

from . import demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=demo.Config.steps, help="SGD steps per network")
    parser.add_argument("--seed", type=int, default=demo.Config.seed, help="seed of split, init and batches")


def run(args: argparse.Namespace) -> int:
    demo.main(demo.Config(steps=args.steps, seed=args.seed))
    return 0
