"""The command line's grammar: every subcommand and its flags, Prometheus-style. Light on purpose: it imports
nothing beyond the standard library, so `anomaly-exporter healthcheck` (a container's HEALTHCHECK, every 30 s)
starts in a fraction of the time and memory the exporter's numerical stack takes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from exporter import __version__

DEFAULT_LISTEN = ":9866"
DEFAULT_MAX_CONNECTIONS = 128  # connections served at once (--web.max-connections)
HEALTHCHECK_HELP = """\
Exit 0 if the exporter on this host answers GET /-/healthy: for container HEALTHCHECKs.

Unless given, the port and --web.config.file are read from the exporter's own command line
(/proc/<pid>/cmdline, pid 1 by default: the exporter in its container). With TLS the check speaks HTTPS
without verifying the certificate (a liveness probe over loopback, like the kubelet's); with basic auth
users, 401 counts as healthy (a hash gives no password, and a server answering 401 is alive); with client
certificates required, a completed TLS handshake (or one refused for want of a certificate) does. Exit
status 1 otherwise, with the reason on stderr; 2 on bad usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-exporter",
        description="Watches Prometheus metrics for anomalies and exports anomaly scores as gauges.",
    )
    parser.add_argument("--version", action="version", version=f"anomaly-exporter {__version__}")
    sub = parser.add_subparsers(dest="command")

    def serving_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--web.listen-address",
            dest="listen",
            default=DEFAULT_LISTEN,
            help=f"address to serve /metrics on (default {DEFAULT_LISTEN})",
        )
        p.add_argument(
            "--web.enable-lifecycle", dest="lifecycle", action="store_true", help="enable POST /-/reload"
        )
        web_config_flag(p)
        p.add_argument(
            "--web.max-connections",
            dest="max_connections",
            type=int,
            default=DEFAULT_MAX_CONNECTIONS,
            help=f"connections served at once; more wait to be accepted (default {DEFAULT_MAX_CONNECTIONS})",
        )
        p.add_argument(
            "--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"]
        )
        p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
        p.add_argument(
            "--storage.path",
            dest="storage_path",
            default="",
            help="directory for state kept across restarts (alert state, fitted models); none = memory only",
        )
        p.add_argument(
            "--scheduler.workers",
            dest="workers",
            type=int,
            default=0,
            help="rule jobs run at the same time (default: number of rules + 2, at least 4)",
        )
        p.add_argument(
            "--shard.count",
            dest="shard_count",
            type=int,
            default=1,
            help="replicas sharing the series of every rule (default 1: no sharding)",
        )
        p.add_argument(
            "--shard.index",
            dest="shard_index",
            default="0",
            help="this replica's shard, 0..count-1, or 'auto': the ordinal ending the hostname "
            "(a StatefulSet pod <name>-<ordinal>)",
        )

    def web_config_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--web.config.file",
            dest="web_config_file",
            default="",
            help="exporter-toolkit web config file: TLS, basic auth and headers of the web endpoint "
            "(re-read on every request and TLS connection)",
        )

    run = sub.add_parser("run", help="run the exporter (the default command)")
    run.add_argument(
        "--config.file", dest="config_file", default="rules.yaml", help="rules file (default rules.yaml)"
    )
    serving_flags(run)
    test_receiver = sub.add_parser(
        "test-receiver", help="send a test alert to a receiver of the rules file, to check its routing"
    )
    test_receiver.add_argument("receiver", help="receiver name (from the rules file's `receivers:`)")
    test_receiver.add_argument("--config.file", dest="config_file", default="rules.yaml")
    check = sub.add_parser("check", help="validate a rules file and exit non-zero on errors")
    check.add_argument("file", nargs="?", default="rules.yaml")
    web_config_flag(check)
    sub.add_parser("schema", help="print the JSON Schema of the rules file")
    demo = sub.add_parser("demo", help="run on a built-in synthetic source (no Prometheus needed)")
    serving_flags(demo)
    _backtest_flags(sub)
    _healthcheck_flags(sub)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args_list = list(argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "run")  # `anomaly-exporter --config.file x` means `run`
    return build_parser().parse_args(args_list)


def _backtest_flags(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backtest", help="replay history through a rule's model as the live loop would")
    p.add_argument("--input", help="CSV with header timestamp,value (ISO timestamps or epoch seconds)")
    p.add_argument(
        "--output", required=True, help="CSV to write: timestamp,value,score,expected,lower,upper,alert"
    )
    p.add_argument("--config", help="rules file whose rule settings to use (default: built-in defaults)")
    p.add_argument("--rule", help="rule name in --config")
    p.add_argument("--start", help="with --config/--rule and no --input: query Prometheus from this time")
    p.add_argument("--end", help="... until this time (ISO or epoch seconds; default now)")
    p.add_argument(
        "--labels", help="anomaly windows: NAB combined_windows.json or a JSON list of [start, end]"
    )
    p.add_argument("--profiles", help="NAB profiles.json for NAB scores (default: beside --labels)")
    p.add_argument(
        "--report",
        help="write an HTML report with the series, band, score and alert spans (a .svg name: one picture"
        " of the highest-scoring series)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _healthcheck_flags(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "healthcheck",
        help="exit 0 if the exporter on this host answers /-/healthy (for container HEALTHCHECKs)",
        description=HEALTHCHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pid", type=int, default=1, help="process whose flags to read when not given (default 1)"
    )
    p.add_argument(
        "--web.listen-address", dest="listen", default=None, help=f"default: the process' or {DEFAULT_LISTEN}"
    )
    p.add_argument("--web.config.file", dest="web_config_file", default=None, help="default: the process'")
    p.add_argument(
        "--timeout",
        type=float,
        default=4.0,
        help="seconds each step may take: connect, TLS handshake, answer (default 4)",
    )


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port` or `:port` (all interfaces), as Prometheus' --web.listen-address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid --web.listen-address {address!r}: expected host:port, e.g. :9465")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)
