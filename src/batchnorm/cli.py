"""The `batchnorm` command: one subcommand per module, each providing `add_arguments(parser)` and `run(args)`.

Exit codes: 0 success, 2 bad input (a bad option or value, an invalid environment variable, a file that cannot
be read or written), always with one line `batchnorm <command>: error: ...` on stderr; 1 for `doctor` findings
and for unexpected internal errors, which print a traceback so that bugs stay visible.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module implementing it, one-line help). Modules are imported only when needed.
SUBCOMMANDS = {
    "lab": ("batchnorm.lab.cli", "run the lab: experiments on the claims about batch norm, and an HTML report"),
    "bench": ("batchnorm.benchmark", "time batch norm (ours and torch) against a plain copy, per shape"),
    "fold": ("batchnorm.tools.cli.fold", "fold a model's batch norms into the layers before them (and export ONNX)"),
    "recalibrate": ("batchnorm.tools.cli.recalibrate", "precise batch-norm statistics on data (PreciseBN / AdaBN)"),
    "doctor": ("batchnorm.tools.cli.doctor", "find batch-norm problems in a model, with a fix for each"),
}


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): `batchnorm fold: error: ... (see --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _configuration_error(error: BaseException) -> bool:
    """True for an invalid environment variable (kernels.config.ConfigurationError), without importing it."""
    config = sys.modules.get("batchnorm.kernels.config")
    return config is not None and isinstance(error, config.ConfigurationError)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="batchnorm", description="Exact, fast batch normalization for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args._run(args) or 0)
    except Exception as error:  # noqa: BLE001 - only an invalid environment variable is turned into exit 2
        if not _configuration_error(error):
            raise
        print(f"batchnorm {args.command}: error: {error}", file=sys.stderr)
        return 2
