"""River's bundled Shuttle data set as CSV, for the backtest's numeric mode.

    python -m anomaly_stream.tools.shuttle OUT.csv [--limit N]
    python -m anomaly_stream.tools.backtest --export-shuttle OUT.csv [--limit N]

Columns f1..f9 and `anomaly` (1 for the rare classes), in River's order;
then `anomaly-stream backtest OUT.csv --features f1,...,f9 --label-field anomaly`.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence


def export_shuttle(path: str | Path, limit: int | None = None) -> int:
    """Write River's bundled Shuttle data set as CSV: f1..f9 and `anomaly`."""
    from river import datasets

    n = 0
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([f"f{i}" for i in range(1, 10)] + ["anomaly"])
        for x, y in datasets.Shuttle():
            writer.writerow([x[f"f{i}"] for i in range(1, 10)] + [y])
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anomaly_stream.tools.shuttle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out", metavar="OUT.csv")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    opts = parser.parse_args(list(argv) if argv is not None else None)
    n = export_shuttle(opts.out, opts.limit)
    print(f"wrote {n} rows to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
