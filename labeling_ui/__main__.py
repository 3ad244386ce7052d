"""``python -m labeling_ui serve|users|import|export ...``: the same as ``align label ...``."""

import argparse
import sys

from alignment.errors import AlignError
from labeling_ui.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labeling_ui")
    register(parser.add_subparsers(dest="job"))
    args = parser.parse_args(["label", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except AlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
