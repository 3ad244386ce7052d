"""Labeling server under load: N annotators x R rankings over the JSON HTTP API (loopback).

    flock /tmp/align-heavy.lock python benchmarks/labeling_load.py --annotators 50 --rankings 20 --kill-after 400

Prints a table: submissions acknowledged/stored, lost, duplicated, over-M, submit latency p50/p95/max.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling_ui.load import run_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--rankings", type=int, default=20, help="rankings each annotator submits")
    parser.add_argument("-m", type=int, default=3, help="annotations per item")
    parser.add_argument(
        "--kill-after",
        type=int,
        default=None,
        help="SIGKILL and restart the server after this many acknowledged submissions",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="align-label-load-"))
    result, checks = run_load(workdir, args.annotators, args.rankings, args.m, kill_after=args.kill_after)
    rows = [
        ("annotators x rankings", f"{args.annotators} x {args.rankings} (M={args.m})"),
        (
            "server SIGKILLed and restarted",
            f"after {args.kill_after} acks" if args.kill_after is not None else "no",
        ),
        ("acknowledged / stored", f"{checks['acknowledged']} / {checks['stored']}"),
        ("submits retried after the crash", str(result.retried_after_crash)),
        ("lost / duplicated / over M", f"{checks['lost']} / {checks['duplicated']} / {checks['over_m']}"),
        ("client errors", str(checks["errors"])),
        (
            "submit latency p50 / p95 / max (ms)",
            f"{1000 * result.p(50):.1f} / {1000 * result.p(95):.1f} / {1000 * max(result.latencies):.1f}",
        ),
        ("wall time (s)", f"{result.wall_seconds:.1f}"),
        ("throughput (submits/s)", f"{checks['acknowledged'] / result.wall_seconds:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    for error in result.errors[:5]:
        print("error:", error, file=sys.stderr)
    ok = checks["lost"] == checks["duplicated"] == checks["over_m"] == checks["errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
