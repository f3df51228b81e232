"""`batchnorm doctor MODEL [--data DATA]`: a table of batch-norm problems per layer, each with a fix."""

from __future__ import annotations

import argparse

from . import EXIT_FINDINGS, CommandError, add_data_arguments, add_model_arguments, guarded_forward, load_data, \
    load_model, run_safely


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, required=False)
    parser.add_argument("--fail-on", choices=("error", "warning", "never"), default="error",
                        help="exit with code 1 when a finding of this severity or worse exists (default: error)")


def _body(args) -> int:
    from ..doctor import doctor

    model = load_model(args)
    data = load_data(args) if args.data else None
    try:
        report = doctor(model, data, num_batches=args.num_batches,
                        forward=guarded_forward(args.model, args.data) if args.data else None)
    except ValueError as error:
        raise CommandError(str(error))
    print(report)
    failing = {"error": ("error",), "warning": ("error", "warning"), "never": ()}[args.fail_on]
    return EXIT_FINDINGS if report.worst in failing else 0


def run(args: argparse.Namespace) -> int:
    return run_safely("doctor", _body, args)
