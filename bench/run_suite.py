"""Run the issue's benchmark suite (`batchnorm bench`) and save the table and the JSON next to this script.

    python bench/run_suite.py                 # 2 threads, float32, 15 rounds per shape
    python bench/run_suite.py --repeats 31    # any `batchnorm bench` argument is passed through
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from batchnorm import benchmark


def main(argv: list[str] | None = None) -> int:
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.json is None:
        args.json = str(here / "results.json")
    return benchmark.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
