"""Command line entry point (`anomaly-exporter`, `python -m exporter`): parse, then run the subcommand."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from exporter import healthcheck
from exporter.flags import build_parser, parse_args

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "healthcheck":
        return healthcheck.run(args)
    # numpy, scikit-learn, the scheduler...: imported only for the commands that use them, so the
    # healthcheck (every 30 s in a container) costs ~25 MB and 0.1 s, not ~170 MB and 1.2 s
    from exporter import commands

    return commands.run(args)
