"""Labeling server under load: N annotators x R rankings over the JSON HTTP API (loopback).

    flock /tmp/align-heavy.lock python benchmarks/labeling_load.py --annotators 50 --rankings 20 --database both
    flock /tmp/align-heavy.lock python benchmarks/labeling_load.py --kill-after 400 --database both

Prints a table per database: submissions acknowledged/stored, lost, duplicated, over-M, submit latency
p50/p95/max. PostgreSQL is a throwaway local server (initdb, fsync on) started by this script.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling_ui.load import create_database, postgres_server, run_load  # noqa: E402


def report(database: str, args: argparse.Namespace, result, checks: dict[str, int]) -> list[tuple[str, str]]:  # noqa: ANN001
    return [
        ("database", database),
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


def load(workdir: Path, args: argparse.Namespace, db_url: str | None):  # noqa: ANN201
    return run_load(workdir, args.annotators, args.rankings, args.m, kill_after=args.kill_after, db_url=db_url)


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
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="align-label-load-"))
    ok = True
    for database in ["sqlite", "postgresql"] if args.database == "both" else [args.database]:
        if database == "sqlite":
            result, checks = load(workdir / database, args, None)
        else:
            with postgres_server() as server:
                result, checks = load(workdir / database, args, create_database(server))
        rows = report(database, args, result, checks)
        width = max(len(name) for name, _ in rows)
        print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
        for name, value in rows:
            print(f"| {name.ljust(width)} | {value} |")
        print(flush=True)
        for error in result.errors[:5]:
            print("error:", error, file=sys.stderr)
        ok = ok and checks["lost"] == checks["duplicated"] == checks["over_m"] == checks["errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
