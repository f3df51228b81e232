"""`batchnorm fold MODEL`: fold the batch norms of a model for inference, optionally export it to ONNX."""

from __future__ import annotations

import argparse

from . import CommandError, add_model_arguments, check_output_path, load_model, parse_shape, run_safely, \
    write_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--input-shape", metavar="N,C,...", help="shape of a random example input: checks the "
                                                                 "folded model against the original; needed by --onnx")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="export the folded model to this ONNX file (written "
                                                           "atomically)")
    parser.add_argument("--out", metavar="FILE.pt", help="save the folded model's state_dict (it loads into "
                                                         "fold(factory())[0]; written atomically)")


def _body(args) -> int:
    import torch

    from ..fold import fold
    from ..onnx_export import export_onnx

    for path, option in ((args.out, "--out"), (args.onnx, "--onnx")):
        if path:
            check_output_path(path, option)
    if args.onnx and not args.input_shape:
        raise CommandError("--onnx needs --input-shape (the shape of an example input, e.g. 1,3,224,224)")
    model = load_model(args).eval()
    example = None
    if args.input_shape:
        example = torch.randn(parse_shape(args.input_shape), generator=torch.Generator().manual_seed(0))
    try:
        folded, report = fold(model, example)
    except Exception as error:  # noqa: BLE001 - e.g. an input shape the model does not accept
        raise CommandError(f"folding failed: {type(error).__name__}: {error}")
    print(report)
    if args.out:
        state = folded.state_dict()
        write_output(args.out, "--out", lambda temporary: torch.save(state, temporary))
        print(f"saved the folded state_dict to {args.out}")
    if args.onnx:
        try:
            export_onnx(model, example, args.onnx)
        except Exception as error:  # noqa: BLE001
            raise CommandError(f"ONNX export failed: {type(error).__name__}: {error}; {args.onnx!r} was left as it "
                               f"was")
        print(f"exported the folded model to {args.onnx}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_safely("fold", _body, args)
