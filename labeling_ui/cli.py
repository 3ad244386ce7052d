"""Placeholder replaced by the labeling branch."""


def register(subparsers) -> None:
    return None
