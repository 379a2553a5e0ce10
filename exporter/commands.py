"""Subcommands that need the exporter proper: run (default), demo, check, schema, backtest, test-receiver."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__, backtest_cmd
from exporter.alert_registry import Alerting
from exporter.collector import AnomalyCollector
from exporter.config import Config, ConfigError, PrometheusConfig, json_schema, load_config, parse_config
from exporter.flags import parse_listen_address
from exporter.logs import setup_logging
from exporter.modelstate import ModelStore
from exporter.notify import Notifier
from exporter.pipeline import Source
from exporter.reloader import Reloader
from exporter.scheduler import Scheduler
from exporter.server import WebApp, WebServer
from exporter.sharding import Shard, ShardError, parse_shard
from exporter.store import Store
from exporter.webconfig import WebConfigError, load_web_config
from exporter.webguard import WebGuard

log = logging.getLogger("exporter")


def run(args: argparse.Namespace) -> int:
    """Every subcommand but healthcheck (see exporter.cli)."""
    if args.command == "check":
        return _check(args.file, args.web_config_file)
    if args.command == "test-receiver":
        return _test_receiver(args.config_file, args.receiver)
    if args.command == "backtest":
        return backtest_cmd.run(args)
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        shard = parse_shard(args.shard_index, args.shard_count, socket.gethostname())
    except ShardError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format)
    if args.command == "demo":
        from exporter.demo import DEMO_RULES, DemoSource

        source = DemoSource()
        config = parse_config(DEMO_RULES, source="<demo rules>")
        return serve(config, args, lambda _cfg: source, reload=None, shard=shard)
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        log.error("invalid rules file: %s", exc)
        print(exc, file=sys.stderr)
        return 1
    from exporter.reader import PrometheusReader

    return serve(config, args, PrometheusReader, reload=lambda: load_config(args.config_file), shard=shard)


def _check(path: str, web_config_file: str = "") -> int:
    status = 0
    try:
        config = load_config(path)
        print(f"{path}: OK, {len(config.rules)} rule(s): {', '.join(r.name for r in config.rules)}")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        status = 1
    if web_config_file:
        try:
            web = load_web_config(web_config_file)
        except WebConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        tls = f"TLS ({web.tls.client_auth_type})" if web.tls else "no TLS"
        print(f"{web_config_file}: OK, {tls}, {len(web.users)} basic auth user(s)")
    return status


def _web_guard(path: str) -> WebGuard | None:
    """The web config of --web.config.file, checked as at startup; WebConfigError if it is unusable."""
    if not path:
        return None
    config = load_web_config(path)
    log.info("web config %s: TLS is %s", path, "enabled" if config.tls else "disabled")
    if config.users and not config.tls:
        log.warning("basic auth without TLS: passwords cross the network in clear text")
    return WebGuard(path, config)


def _test_receiver(path: str, name: str) -> int:
    setup_logging("warn", "logfmt")
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if name not in config.receivers:
        known = ", ".join(sorted(config.receivers)) or "none defined"
        print(f"{path}: no receiver named {name!r} (receivers: {known})", file=sys.stderr)
        return 1
    notifier = Notifier({name: config.receivers[name]})
    try:
        lines = notifier.test_receiver(name)
    finally:
        notifier.close(0)
    for line in lines:
        print(line)
    return 1 if any(line.startswith("failed") for line in lines) else 0


def serve(
    config: Config,
    args: argparse.Namespace,
    source_factory: Callable[[PrometheusConfig], Source],
    reload: Callable[[], Config] | None,
    shard: Shard | None = None,
) -> int:
    """Run the scheduler and web server until SIGTERM/SIGINT; SIGHUP (and /-/reload) re-reads the rules.

    With a `shard`, every rule keeps (scores, exports, alerts on) only this replica's share of the series.
    """
    shard = shard or Shard()
    try:
        host, port = parse_listen_address(args.listen)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        guard = _web_guard(args.web_config_file)
    except WebConfigError as exc:
        log.error("invalid web config file: %s", exc)
        print(exc, file=sys.stderr)
        return 1
    store = Store()
    state_file = os.path.join(args.storage_path, "alerts.json") if args.storage_path else None
    if state_file is None and config.receivers:
        log.warning(
            "no --storage.path: alert state is not kept across restarts (may re-page or miss a resolve)"
        )
    prometheus = config.prometheus
    alerting = Alerting(
        Notifier(config.receivers), state_file, external_url=prometheus.external_url or prometheus.url
    )
    registry = CollectorRegistry()
    registry.register(AnomalyCollector(store, alerting, shard))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    # one worker per rule (each rule runs one job at a time), so a slow rule never queues the others
    workers = args.workers or max(4, len(config.rules) + 2)
    models = ModelStore(os.path.join(args.storage_path, "models")) if args.storage_path else None
    scheduler = Scheduler(
        store, source_factory, workers=workers, alerting=alerting, shard=shard, models=models
    )
    scheduler.apply(config)
    reloader = Reloader(reload, scheduler, alerting, store, config.receivers) if reload is not None else None

    def do_reload() -> str | None:
        return reloader() if reloader is not None else "this mode has no rules file to reload"

    app = WebApp(store, registry, reload=do_reload, enable_lifecycle=args.lifecycle, shard=shard)
    try:
        server = WebServer(app, host, port, guard=guard, max_connections=args.max_connections)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=do_reload, name="reload").start())
    scheduler.start()
    server.start()
    log.info(
        "listening on %s:%d (version %s, %d rule(s), shard %s)",
        host,
        server.port,
        __version__,
        len(config.rules),
        shard,
    )
    # Wake up regularly: a signal delivered to another thread only runs its handler once the main thread
    # executes Python code again, which a bare wait() would postpone forever.
    while not stop.wait(0.5):
        pass
    log.info("shutting down")
    server.stop()
    scheduler.shutdown(wait=False)
    notifier = alerting.set_outbox(None)
    if isinstance(notifier, Notifier):
        notifier.close(timeout=5.0)  # deliver what is queued, within the orchestrator's grace period
    alerting.save()
    # A job may be inside a slow query (timeout × retries); nothing it holds needs saving, so don't let
    # the interpreter wait for it past the orchestrator's grace period.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
