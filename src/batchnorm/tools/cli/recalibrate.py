"""`batchnorm recalibrate MODEL --data DATA --out FILE`: precise batch-norm statistics (PreciseBN / AdaBN)."""

from __future__ import annotations

import argparse

from . import CommandError, add_data_arguments, add_model_arguments, check_output_path, guarded_forward, \
    load_data, load_model, run_safely, write_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, required=True)
    parser.add_argument("--out", metavar="FILE.pt", required=True,
                        help="where to save the recalibrated state_dict (torch.save, written atomically: it may be "
                             "the --weights file)")
    parser.add_argument("--skip-nonfinite", action="store_true",
                        help="leave out the batches that give NaN/inf statistics (default: refuse them, exit 2)")


def _body(args) -> int:
    import torch

    from ..recalibrate import recalibrate

    check_output_path(args.out, "--out")
    model = load_model(args)
    data = load_data(args)
    try:
        model, report = recalibrate(model, data, args.num_batches, skip_nonfinite=args.skip_nonfinite,
                                    forward=guarded_forward(args.model, args.data))
    except ValueError as error:
        raise CommandError(str(error))
    print(report)
    state = model.state_dict()
    write_output(args.out, "--out", lambda temporary: torch.save(state, temporary))
    print(f"saved the recalibrated state_dict to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_safely("recalibrate", _body, args)
