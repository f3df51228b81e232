"""`batchnorm recalibrate MODEL --data DATA --out FILE`: precise batch-norm statistics (PreciseBN / AdaBN)."""

from __future__ import annotations

import argparse

from . import CommandError, add_data_arguments, add_model_arguments, load_data, load_model, run_safely


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, required=True)
    parser.add_argument("--out", metavar="FILE.pt", required=True,
                        help="where to save the recalibrated state_dict (torch.save)")


def _body(args) -> int:
    import torch

    from ..._atomic import atomic_open
    from ..recalibrate import recalibrate

    model = load_model(args)
    data = load_data(args)
    try:
        model, report = recalibrate(model, data, args.num_batches)
    except ValueError as error:
        raise CommandError(str(error))
    print(report)
    with atomic_open(args.out, "wb") as handle:
        torch.save(model.state_dict(), handle)
    print(f"saved the recalibrated state_dict to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_safely("recalibrate", _body, args)
