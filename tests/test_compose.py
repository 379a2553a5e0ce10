"""The local docker-compose stack without Docker: the compose file's shape, that everything it mounts exists
and is wired to the paths the services read, and that each mounted config passes its own tool's check
(promtool, amtool, the exporter's config loader)."""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.config import load_config
from tests.realservers import require_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"anomaly-exporter", "prometheus", "alertmanager", "grafana", "node-exporter"}
# Written by other parts of the project (the Prometheus alerting rules, the Grafana dashboard): the stack must
# mount them from these paths, which may not exist yet in every checkout of this branch.
PROMETHEUS_RULES = "prometheus/anomaly-exporter-rules.yaml"
DASHBOARDS = "dashboards"
DASHBOARD = "dashboards/anomaly-exporter.json"
# Host paths node-exporter reads (read-only).
HOST_PATHS = {"/", "/proc", "/sys"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container target -> host source (relative to the repo root, or absolute) for a service's binds."""
    out: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # short syntax: source:target[:mode]
            source, target, *_ = volume.split(":")
            if not source.startswith((".", "/")):
                continue  # a named volume
        elif volume["type"] == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        out[target] = source if source.startswith("/") else Path(source).as_posix()
    return out


def mount_target(service: str, source: str) -> str:
    targets = [t for t, s in bind_mounts(compose()["services"][service]).items() if s == source]
    assert len(targets) == 1, (
        f"{service} should mount ./{source} once; binds: {bind_mounts(compose()['services'][service])}"
    )
    return targets[0]


def flag(service: str, name: str) -> str:
    values = [
        a.split("=", 1)[1] for a in compose()["services"][service]["command"] if a.startswith(name + "=")
    ]
    assert len(values) == 1, f"{service}: expected one {name}=... in command"
    return values[0]


def host_path(service: str, container_path: str) -> str:
    """The repo path a container path of `service` comes from, through its bind mounts."""
    for target, source in sorted(
        bind_mounts(compose()["services"][service]).items(), key=lambda kv: -len(kv[0])
    ):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (source + container_path[len(target) :]).lstrip("/")
    raise AssertionError(f"{service}: nothing mounted at {container_path}")


def run_tool(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )


# --------------------------------------------------------------------------------------------------


def test_compose_has_the_stack_with_pinned_images_and_local_only_ports() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == SERVICES
    assert services["anomaly-exporter"]["build"]["context"] == "."
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        _, _, tag = image.rpartition(":")
        assert tag and "/" not in tag and tag != "latest", f"{name}: pin the image tag ({image})"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} should listen on 127.0.0.1 only"
    declared = set(doc.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "volume":
                assert volume["source"] in declared, f"{name}: volume {volume['source']} not declared"


def test_every_bind_mount_source_exists() -> None:
    pending = {PROMETHEUS_RULES, DASHBOARDS}
    seen: set[str] = set()
    for name, service in compose()["services"].items():
        for target, source in bind_mounts(service).items():
            if source.startswith("/"):
                assert source in HOST_PATHS and name == "node-exporter", f"{name}: host path {source}"
                continue
            seen.add(source)
            if source not in pending:
                assert (ROOT / source).exists(), (
                    f"{name}: mounts ./{source} at {target}, which does not exist"
                )
    # The two files other parts of the project provide are mounted by exactly these paths.
    assert pending <= seen, pending - seen
    assert mount_target("prometheus", PROMETHEUS_RULES) == "/etc/prometheus/rules/anomaly-exporter-rules.yaml"
    if (ROOT / DASHBOARDS).exists():
        assert (ROOT / DASHBOARD).is_file()


def test_prometheus_config_passes_promtool_and_is_wired_to_the_stack(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    config_path = host_path("prometheus", flag("prometheus", "--config.file"))
    assert config_path == "deploy/compose/prometheus.yml"
    run_tool([promtool, "check", "config", str(ROOT / config_path)])

    config = yaml.safe_load((ROOT / config_path).read_text(encoding="utf-8"))
    # The alerting rules are mounted where rule_files looks (a glob, so a missing file is not an error).
    rules_target = mount_target("prometheus", PROMETHEUS_RULES)
    assert any(fnmatch.fnmatch(rules_target, pattern) for pattern in config["rule_files"]), config[
        "rule_files"
    ]
    # With the real rules file in place of the glob, promtool checks the rules too.
    if (ROOT / PROMETHEUS_RULES).exists():
        config["rule_files"] = [str(ROOT / PROMETHEUS_RULES)]
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(config), encoding="utf-8")
        run_tool([promtool, "check", "config", str(copy)])

    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["anomaly-exporter"] == ["anomaly-exporter:9866"]
    assert targets["node"] == ["node-exporter:9100"]
    assert targets["prometheus"] == ["localhost:9090"]
    alertmanagers = [
        t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert alertmanagers == ["alertmanager:9093"]
    for target in [t for ts in targets.values() for t in ts] + alertmanagers:
        assert target.split(":")[0] in SERVICES | {"localhost"}, target


def test_alertmanager_config_passes_amtool() -> None:
    amtool = require_binary("amtool")
    config_path = host_path("alertmanager", flag("alertmanager", "--config.file"))
    assert config_path == "deploy/compose/alertmanager.yml"
    run_tool([amtool, "check-config", str(ROOT / config_path)])
    config = yaml.safe_load((ROOT / config_path).read_text(encoding="utf-8"))
    assert config["route"]["receiver"] == "null"


def test_exporter_rules_load_and_point_at_the_stack() -> None:
    rules_path = host_path("anomaly-exporter", flag("anomaly-exporter", "--config.file"))
    assert rules_path == "deploy/compose/rules.yaml"
    config = load_config(ROOT / rules_path, environ={})
    assert config.rules
    assert urlsplit(config.prometheus.url).netloc == "prometheus:9090"
    for receiver in config.receivers.values():
        for url in receiver.urls:
            assert urlsplit(url.reveal()).hostname in SERVICES, receiver.name
    # State goes to the named volume, which starts out owned by the image's user.
    storage = flag("anomaly-exporter", "--storage.path")
    volumes = [v for v in compose()["services"]["anomaly-exporter"]["volumes"] if isinstance(v, dict)]
    assert any(v["type"] == "volume" and v["target"] == storage for v in volumes)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    base = "/etc/grafana/provisioning"
    datasources_dir = ROOT / host_path("grafana", f"{base}/datasources")
    providers_dir = ROOT / host_path("grafana", f"{base}/dashboards")
    datasources = [
        ds
        for f in sorted(datasources_dir.glob("*.yml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    assert [(ds["type"], ds["url"], ds.get("isDefault")) for ds in datasources] == [
        ("prometheus", "http://prometheus:9090", True)
    ]
    providers = [
        p for f in sorted(providers_dir.glob("*.yml")) for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert len(providers) == 1
    assert host_path("grafana", providers[0]["options"]["path"]) == DASHBOARDS
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home) == DASHBOARD
