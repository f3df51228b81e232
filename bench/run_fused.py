"""Run the fused-layer benchmarks (`batchnorm bench --fused --memory`) and save them next to this script.

    python bench/run_fused.py                  # BN+ReLU speed on the suite and the memory table
    python bench/run_fused.py --omp-passive    # any `batchnorm bench` argument is passed through
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
    args.fused = args.memory = True
    if args.json is None:
        args.json = str(here / "results_fused.json")
    return benchmark.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
