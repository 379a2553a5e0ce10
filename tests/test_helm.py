"""The Helm chart (helm/anomaly-exporter): rendered by Helm's own engine, checked against Kubernetes schemas,
and its rules accepted by the exporter's own config validation. No cluster, Docker or network needed.

Helm runs in-process through helm-python-sdk (Helm's Go SDK behind a C ABI); Kubernetes schemas come
bundled with kubernetes-validate. ServiceMonitor and PrometheusRule are prometheus-operator CRDs that no
bundled schema covers, so they get a structural check of our own instead.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from helm_python import chart as helm_chart

from exporter import __version__
from exporter.cli import build_parser
from exporter.config import Config, parse_config
from exporter.sharding import Shard, parse_shard
from exporter.webconfig import parse_web_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "anomaly-exporter"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = [pytest.param(None, id="default")] + [pytest.param(p, id=p.name) for p in CI_FILES]

RELEASE = "demo"
NAMESPACE = "monitoring"
# Kubernetes schemas bundled with kubernetes-validate: the newest it ships and the chart's kubeVersion floor.
KUBE_VERSIONS = ("1.37.0", "1.25.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
FULLNAME = f"{RELEASE}-anomaly-exporter"

# Chart files another part of the project provides; a temporary copy of the chart gets stand-ins if absent.
STAND_INS = {
    "files/anomaly-exporter.json": json.dumps(
        {"title": "stand-in dashboard", "panels": [], "schemaVersion": 39}
    ),
    "files/prometheus-rules.yaml": yaml.safe_dump(
        {
            "groups": [
                {
                    "name": "stand-in",
                    "rules": [{"alert": "AnomalyScoreHigh", "expr": "anomaly_score >= 1", "for": "10m"}],
                }
            ]
        }
    ),
}

RULES_TEXT = """
prometheus: {url: http://prometheus-operated.monitoring.svc:9090}
rules:
  - {name: request_rate, query: 'sum by (job) (rate(http_requests_total[5m]))'}
"""
# What the ci/ files expect to exist in the cluster already (existingSecret, existingConfigMap, extraVolumes,
# secretKeyRef), so the exporter container's files and environment can be laid out as the kubelet would.
EXTERNAL: dict[tuple[str, str], dict[str, str]] = {
    ("Secret", "anomaly-exporter-credentials"): {
        "slack-webhook-url": "https://slack-webhook.example.com/services/T0/B0/stand-in",
        "prometheus-bearer-token": "stand-in-token",
    },
    ("ConfigMap", "team-anomaly-rules"): {"anomaly-rules.yaml": RULES_TEXT},
    ("ConfigMap", "prometheus-ca"): {
        "ca.pem": "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n"
    },
    ("Secret", "incident-bot"): {"url": "https://incident.example.com/hook"},
    ("Secret", "anomaly-exporter-web-tls"): {
        "tls.crt": "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n",
        "tls.key": "-----BEGIN PRIVATE KEY-----\nstand-in\n-----END PRIVATE KEY-----\n",
        "ca.crt": "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n",
    },
    ("Secret", "anomaly-exporter-web-config"): {
        "web.yml": "tls_server_config:\n  cert_file: /etc/anomaly-exporter/web-tls/tls.crt\n"
        "  key_file: /etc/anomaly-exporter/web-tls/tls.key\n  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: /etc/anomaly-exporter/web-tls/ca.crt\n"
    },
    ("Secret", "anomaly-exporter-scrape-credentials"): {"username": "prometheus", "password": "stand-in"},
}


# --- rendering --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart, with stand-ins for the shipped dashboard/rules files where those are missing."""
    copy = tmp_path_factory.mktemp("chart") / "anomaly-exporter"
    shutil.copytree(CHART, copy)
    for name, content in STAND_INS.items():
        if not (copy / name).exists():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_text(content)
    return copy


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Iterator[Any]:
    with helm_chart.Chart.load(chart_dir) as loaded:
        yield loaded


def load_values(path: Path | None) -> dict[str, Any]:
    return {} if path is None else yaml.safe_load(path.read_text()) or {}


class Rendered:
    """The objects of one render, by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.objects: list[dict[str, Any]] = []
        for template, text in manifests.items():
            if template.endswith(".yaml"):
                self.objects += [doc for doc in yaml.safe_load_all(text) if doc]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) <= 1, f"several {kind} objects named {name}"
        return found[0] if found else None

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = self.get(kind, name)
        assert found is not None, f"no {kind} {name or ''} rendered"
        return found

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def workload(self) -> dict[str, Any]:
        """The Deployment, or the StatefulSet in sharding mode: exactly one of the two."""
        (workload,) = self.all("Deployment") + self.all("StatefulSet")
        return workload

    @property
    def service(self) -> dict[str, Any]:
        """The Service Prometheus scrapes (not the headless one of sharding mode)."""
        return self.one("Service", FULLNAME)

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]

    def volume_names(self) -> set[str]:
        """The pod's volumes, plus the StatefulSet's per-pod claims (mounted by name like volumes)."""
        claims = self.workload["spec"].get("volumeClaimTemplates", [])
        return {v["name"] for v in self.pod["spec"]["volumes"]} | {c["metadata"]["name"] for c in claims}

    @property
    def container(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["spec"]["containers"] if c["name"] == "anomaly-exporter"]
        return container

    @property
    def test_pod(self) -> dict[str, Any]:
        (pod,) = [p for p in self.all("Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
        return pod


def render(chart: Any, values: dict[str, Any] | None = None) -> Rendered:
    return Rendered(chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE))


def parse_exporter_args(args: list[str]) -> argparse.Namespace:
    """The container's args through the exporter's own CLI (argparse exits on an unknown flag)."""
    return build_parser().parse_args(["run", *args])


def shard_args(args: list[str]) -> dict[str, str]:
    """The --shard.* flags among the args, as written: {"--shard.count": "3", ...}."""
    return dict(a.split("=", 1) for a in args if a.startswith("--shard."))


# --- the chart as a whole ---------------------------------------------------------------------------------


def test_chart_metadata_follows_the_exporter() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == __version__, "appVersion must be the exporter version (exporter/__init__.py)"
    assert CI_FILES, "ci/*-values.yaml: one small values file per feature"


@pytest.mark.parametrize("values_file", CASES)
def test_lint_is_clean(chart_dir: Path, values_file: Path | None) -> None:
    report = helm_chart.lint(chart_dir, load_values(values_file), strict=True, kube_version="v1.37.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert not problems and not report["errors"], report


def test_optional_objects_are_off_by_default(chart: Any) -> None:
    out = render(chart)
    assert out.kinds() == ["ConfigMap", "Deployment", "Pod", "Service", "ServiceAccount"]
    assert out.deployment["spec"]["replicas"] == 1
    assert out.container["image"] == f"ghcr.io/prometheus-anomaly-exporter/anomaly-exporter:{__version__}"


@pytest.mark.parametrize("values_file", CASES)
def test_every_manifest_validates(chart: Any, values_file: Path | None) -> None:
    """Kubernetes objects against the bundled strict schemas, CRD objects structurally; references resolve."""
    out = render(chart, load_values(values_file))
    for obj in out.objects:
        if obj["kind"] in CRD_KINDS:
            # No bundled schema for prometheus-operator CRDs: skipped here on purpose, checked below instead.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)
            CRD_CHECKS[obj["kind"]](obj, out)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {where}: {exc.message}"
                )
    check_references(out)


def check_references(out: Rendered) -> None:
    """Selectors select the exporter pod (and never the test pod); mounts, Secrets and ConfigMaps exist."""
    pod_labels = out.pod["metadata"]["labels"]
    test_labels = out.test_pod["metadata"]["labels"]
    selectors = [out.workload["spec"]["selector"]["matchLabels"]]
    selectors += [s["spec"]["selector"] for s in out.all("Service")]
    selectors += [p["spec"]["podSelector"]["matchLabels"] for p in out.all("NetworkPolicy")]
    selectors += [p["spec"]["selector"]["matchLabels"] for p in out.all("PodDisruptionBudget")]
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), (selector, pod_labels)
        assert not selector.items() <= test_labels.items(), "the helm test pod must not be selected"
    for obj in out.objects:
        assert obj["metadata"]["namespace"], f"{obj['kind']} without namespace"
    spec = out.pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert len(volumes) == len(spec["volumes"]), "duplicate volume names"
    for mount in out.container["volumeMounts"]:
        assert mount["name"] in out.volume_names(), f"volumeMount {mount['name']} has no volume"
    for volume in volumes.values():
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            assert out.get("ConfigMap", name) or ("ConfigMap", name) in EXTERNAL, name
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert out.get("Secret", name) or ("Secret", name) in EXTERNAL, name
        if "persistentVolumeClaim" in volume:
            assert out.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    if sa := out.get("ServiceAccount"):
        assert spec["serviceAccountName"] == sa["metadata"]["name"]


DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def check_service_monitor(obj: dict[str, Any], out: Rendered) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    spec = obj["spec"]
    assert set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}, spec.keys()
    selected = [
        s
        for s in out.all("Service")
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [out.service], "exactly the exporter's Service: every pod is scraped once"
    service = out.service
    assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    assert spec["jobLabel"] in service["metadata"]["labels"]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    endpoint_keys = {
        "port",
        "path",
        "scheme",
        "tlsConfig",
        "basicAuth",
        "interval",
        "scrapeTimeout",
        "honorLabels",
        "relabelings",
        "metricRelabelings",
    }
    # The helm test reaches /-/ready over HTTPS exactly when the web config turns TLS on.
    test_env = [e for c in out.test_pod["spec"]["containers"] for e in c.get("env", [])]
    tls = any(e.get("value", "").startswith("https://") for e in test_env)
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= endpoint_keys, endpoint.keys()
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert endpoint["scheme"] in ("http", "https")
        if tls:  # the probes speak HTTPS, so does the scrape (unless serviceMonitor.scheme says otherwise)
            assert endpoint["scheme"] == "https"
        for key in ("username", "password"):
            assert key not in endpoint.get("basicAuth", {}) or set(endpoint["basicAuth"][key]) == {
                "name",
                "key",
            }
        assert isinstance(endpoint["honorLabels"], bool)
        for key in ("interval", "scrapeTimeout"):
            assert DURATION.fullmatch(endpoint[key]), endpoint[key]
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert isinstance(relabel, dict) and relabel


def check_prometheus_rule(obj: dict[str, Any], out: Rendered) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    assert set(obj["spec"]) == {"groups"}
    names = [g["name"] for g in obj["spec"]["groups"]]
    assert names and len(names) == len(set(names)), names
    group_keys = {"name", "interval", "rules", "limit", "query_offset", "labels", "partial_response_strategy"}
    rule_keys = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for group in obj["spec"]["groups"]:
        assert set(group) <= group_keys and isinstance(group["name"], str), group.keys()
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= rule_keys, rule.keys()
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str | int) and str(rule["expr"]).strip()
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values()), rule
            for key in ("for", "keep_firing_for"):
                assert key not in rule or DURATION.fullmatch(rule[key]), rule[key]


CRD_CHECKS = {"ServiceMonitor": check_service_monitor, "PrometheusRule": check_prometheus_rule}


# --- the exporter pod -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CASES)
def test_pod_security(chart: Any, values_file: Path | None) -> None:
    out = render(chart, load_values(values_file))
    for pod_spec in (out.pod["spec"], out.test_pod["spec"]):
        pod_ctx = pod_spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod_spec["automountServiceAccountToken"] is False
        for container in pod_spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True
            for key in ("runAsUser", "runAsGroup"):
                assert isinstance(ctx[key], int) and ctx[key] > 0, key
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert out.pod["spec"]["securityContext"]["fsGroup"] == out.container["securityContext"]["runAsGroup"]
    mounts = {m["mountPath"]: m["name"] for m in out.container["volumeMounts"]}
    volumes = {v["name"]: v for v in out.pod["spec"]["volumes"]}
    assert volumes[mounts["/tmp"]] == {"name": mounts["/tmp"], "emptyDir": {}}, "a writable /tmp"


def test_default_resources_are_stated(chart: Any) -> None:
    assert render(chart).container["resources"] == {
        "requests": {"cpu": "100m", "memory": "384Mi"},
        "limits": {"memory": "1536Mi"},
    }


def web_modes(values: dict[str, Any]) -> tuple[bool, bool]:
    """(TLS, basic auth) as the values' web config turns them on."""
    web = values.get("web", {})
    inline = {} if web.get("existingSecret") else web.get("config", {})
    return (
        bool(web.get("tls") or inline.get("tls_server_config")),
        bool(web.get("basicAuth") or inline.get("basic_auth_users")),
    )


@pytest.mark.parametrize("values_file", CASES)
def test_probes(chart: Any, values_file: Path | None) -> None:
    """httpGet on /-/healthy and /-/ready; HTTPS with TLS; tcpSocket with basic auth (no password in spec)."""
    values = load_values(values_file)
    container = render(chart, values).container
    assert container["ports"] == [{"name": "http-metrics", "containerPort": 9866, "protocol": "TCP"}]
    tls, basic_auth = web_modes(values)
    for probe, path in (
        ("livenessProbe", "/-/healthy"),
        ("readinessProbe", "/-/ready"),
        ("startupProbe", "/-/healthy"),
    ):
        if basic_auth:
            assert "httpGet" not in container[probe] and container[probe]["tcpSocket"] == {
                "port": "http-metrics"
            }
        else:
            expected = {"path": path, "port": "http-metrics", **({"scheme": "HTTPS"} if tls else {})}
            assert container[probe]["httpGet"] == expected
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "room for a slow interpreter start"


def test_probes_keep_http_when_given_credentials(chart: Any) -> None:
    values = load_values(CHART / "ci" / "web-config-values.yaml")
    header = [{"name": "Authorization", "value": "Basic cHJvYmU6cHJvYmU="}]
    probe = {
        "httpGet": {"path": "/-/ready", "port": "http-metrics", "httpHeaders": header},
        "periodSeconds": 10,
    }
    container = render(chart, {**values, "readinessProbe": probe}).container
    assert container["readinessProbe"]["httpGet"] == {**probe["httpGet"], "scheme": "HTTPS"}
    assert "tcpSocket" in container["livenessProbe"]


@pytest.mark.parametrize("values_file", CASES)
def test_web_config_is_mounted_and_valid(chart: Any, values_file: Path | None, tmp_path: Path) -> None:
    """--web.config.file names the mounted file; it passes the exporter's own parser and the certificate
    files it names exist in the container's volumes. The helm test speaks the same scheme."""
    values = load_values(values_file)
    out = render(chart, values)
    parsed = parse_exporter_args(out.container["args"])
    web = values.get("web", {})
    if not (web.get("config") or web.get("existingSecret")):
        assert parsed.web_config_file == "" and out.get("Secret", f"{FULLNAME}-web-config") is None
        return
    lay_out_container(out, tmp_path)
    path = tmp_path / parsed.web_config_file.lstrip("/")
    config = parse_web_config(path.read_bytes(), parsed.web_config_file)
    mounts = {m["name"]: m for m in out.container["volumeMounts"]}
    assert mounts["web-config"]["readOnly"] is True
    tls, basic_auth = web_modes(values)
    assert (config.tls is not None) == tls and bool(config.users) == basic_auth
    if config.tls is not None:
        for name in config.tls.files():
            assert (tmp_path / name.lstrip("/")).is_file(), f"{name} is not in a mounted volume"
    test = out.test_pod["spec"]["containers"][0]
    env = {e["name"]: e for e in test.get("env", [])}
    if tls or basic_auth:
        assert env["READY_URL"]["value"].startswith("https://" if tls else "http://")
        assert test["image"] == out.container["image"]


STORAGE_EMPTYDIR = {"name": "storage", "emptyDir": {}}


@pytest.mark.parametrize("values_file", CASES)
def test_args_are_exporter_flags(chart: Any, values_file: Path | None) -> None:
    """The container's args parse with the exporter's own CLI and point into the mounted volumes."""
    values = load_values(values_file)
    out = render(chart, values)
    args = out.container["args"]
    parsed = parse_exporter_args(args)
    assert parsed.config_file == "/etc/anomaly-exporter/rules.yaml"
    assert parsed.listen == ":9866"
    assert parsed.storage_path == "/var/lib/anomaly-exporter"
    log = values.get("log", {})
    assert (parsed.log_level, parsed.log_format) == (log.get("level", "info"), log.get("format", "logfmt"))
    extra = values.get("extraArgs", [])
    assert args[len(args) - len(extra) :] == extra, "extraArgs come last, as given"
    mounts = {m["mountPath"]: m["name"] for m in out.container["volumeMounts"]}
    assert mounts["/var/lib/anomaly-exporter"] == "storage"
    assert mounts["/etc/anomaly-exporter"] == "config"
    persistent = values.get("persistence", {}).get("enabled", False)
    storage = {v["name"]: v for v in out.pod["spec"]["volumes"]}.get("storage")
    sharding = values.get("sharding", {})
    if sharding.get("enabled"):
        assert (parsed.shard_count, parsed.shard_index) == (sharding.get("replicas", 2), "auto")
        claims = [c["metadata"]["name"] for c in out.workload["spec"].get("volumeClaimTemplates", [])]
        # Persistent: one claim per shard, no pod volume; otherwise an emptyDir as in the Deployment.
        expected = (["storage"], None) if persistent else ([], STORAGE_EMPTYDIR)
        assert (claims, storage) == expected
        return
    if parsed.web_config_file:
        assert parsed.web_config_file == "/etc/anomaly-exporter/web/web-config.yml"
        assert mounts["/etc/anomaly-exporter/web"] == "web-config"
    assert not shard_args(args), "unsharded: the exporter's defaults (one shard)"
    assert ("persistentVolumeClaim" in storage) == persistent and ("emptyDir" in storage) != persistent
    assert out.deployment["spec"]["strategy"]["type"] == ("Recreate" if persistent else "RollingUpdate")


def test_checksum_rolls_pods_on_config_change(chart: Any) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        annotations = render(chart, values).pod["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = checksums({})
    assert set(base) == {"checksum/config", "checksum/secret"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in base.values())
    assert checksums({}) == base, "deterministic"
    changed_rules = checksums({"rules": {"defaults": {"z_threshold": 5}}})
    assert changed_rules["checksum/config"] != base["checksum/config"]
    assert changed_rules["checksum/secret"] == base["checksum/secret"]
    changed_secret = checksums({"secrets": {"slackWebhookUrl": "https://slack-webhook.example.com/a"}})
    assert changed_secret["checksum/secret"] != base["checksum/secret"]
    assert changed_secret["checksum/config"] == base["checksum/config"]
    assert checksums({"service": {"port": 8080}}) == base, "unrelated values don't roll the pods"


# --- rules and secrets: what the exporter will read --------------------------------------------------------


def lay_out_container(out: Rendered, root: Path) -> dict[str, str]:
    """Write the exporter container's mounted files under `root` as the kubelet would (ConfigMap and Secret
    keys as files, items mapped to their paths); return the container's environment."""

    def source(kind: str, name: str) -> dict[str, str]:
        obj = out.get(kind, name)
        if obj is None:
            return EXTERNAL[(kind, name)]
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
        return obj["data"]

    volumes = {v["name"]: v for v in out.pod["spec"]["volumes"]}
    for mount in out.container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes.get(mount["name"], {})  # absent: a StatefulSet claim, empty at start
        for kind, key, name_key in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
            if key in volume:
                data = source(kind, volume[key][name_key])
                items = volume[key].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (target / item["path"]).write_text(data[item["key"]])
    env = {}
    for var in out.container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = EXTERNAL[("Secret", ref["name"])][ref["key"]]
    return env


def load_rules_as_mounted(out: Rendered, root: Path) -> Config:
    """parse_config on the rules.yaml the container would read, its *_file paths resolved inside `root`.

    The loader reads secret files (and checks `path` files exist) at load time and uses absolute paths as
    they are, so absolute paths are re-rooted into the laid-out tree: a `url_file` naming a key the mounted
    Secret doesn't have fails here just as it would in the pod."""
    env = lay_out_container(out, root)
    config_file = parse_exporter_args(out.container["args"]).config_file
    data = yaml.safe_load((root / config_file.lstrip("/")).read_text())

    def reroot(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: str(root / v.lstrip("/")) if k.endswith("_file") and v.startswith("/") else reroot(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [reroot(v) for v in node]
        return node

    return parse_config(yaml.safe_dump(reroot(data)), source=config_file, environ=env)


@pytest.mark.parametrize("values_file", CASES)
def test_rules_pass_exporter_validation(chart: Any, values_file: Path | None, tmp_path: Path) -> None:
    values = load_values(values_file)
    out = render(chart, values)
    config = load_rules_as_mounted(out, tmp_path)
    assert config.rules
    if values_file is None:
        assert len(config.rules) == len(yaml.safe_load((CHART / "values.yaml").read_text())["rules"]["rules"])
    secrets = {k: v for k, v in values.get("secrets", {}).items() if isinstance(v, str) and v}
    if secrets.get("slackWebhookUrl"):
        slack = next(r for r in config.receivers.values() if r.type == "slack")
        assert slack.urls[0].reveal() == secrets["slackWebhookUrl"], "the Secret's file reached the rules"
    if secrets.get("prometheusBearerToken"):
        assert config.prometheus.bearer_token.reveal() == secrets["prometheusBearerToken"]


def test_rules_text_is_kept_verbatim(chart: Any) -> None:
    values = load_values(CHART / "ci" / "rules-text-values.yaml")
    configmap = render(chart, values).one("ConfigMap", FULLNAME)
    assert configmap["data"]["rules.yaml"].strip() == values["rules"].strip()


def test_secret_only_with_values_and_mounted_where_rules_look(chart: Any) -> None:
    out = render(chart)
    assert out.get("Secret") is None
    assert "secrets" not in {m["name"] for m in out.container["volumeMounts"]}

    out = render(chart, {"secrets": {"prometheusBearerToken": "t", "extra": {"client.pem": "pem"}}})
    secret = out.one("Secret")
    assert set(secret["data"]) == {"prometheus-bearer-token", "client.pem"}, "empty values are left out"
    mount = next(m for m in out.container["volumeMounts"] if m["name"] == "secrets")
    assert mount["mountPath"] == "/etc/anomaly-exporter/secrets" and mount["readOnly"] is True

    out = render(chart, {"existingSecret": "mine", "secrets": {"prometheusBearerToken": "ignored"}})
    assert out.get("Secret") is None
    volume = next(v for v in out.pod["spec"]["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == "mine"


def test_existing_configmap_replaces_the_rules(chart: Any) -> None:
    out = render(chart, load_values(CHART / "ci" / "existing-configmap-values.yaml"))
    assert out.get("ConfigMap") is None
    config = next(v for v in out.pod["spec"]["volumes"] if v["name"] == "config")["configMap"]
    assert config == {
        "name": "team-anomaly-rules",
        "items": [{"key": "anomaly-rules.yaml", "path": "rules.yaml"}],
    }


# --- optional objects -------------------------------------------------------------------------------------


def test_shipped_dashboard_and_alert_rules(chart: Any, chart_dir: Path) -> None:
    out = render(chart, {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}})
    dashboard = out.one("ConfigMap", f"{RELEASE}-anomaly-exporter-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (chart_dir / "files" / "anomaly-exporter.json").read_text()
    assert json.loads(dashboard["data"]["anomaly-exporter.json"]) == json.loads(shipped)
    rule = out.one("PrometheusRule")
    assert (
        rule["spec"]["groups"]
        == yaml.safe_load((chart_dir / "files" / "prometheus-rules.yaml").read_text())["groups"]
    )


def test_missing_shipped_files_fail_with_their_name(tmp_path: Path) -> None:
    bare = tmp_path / "anomaly-exporter"
    shutil.copytree(
        CHART, bare, ignore=shutil.ignore_patterns("anomaly-exporter.json", "prometheus-rules.yaml")
    )
    with helm_chart.Chart.load(bare) as loaded:
        for values, name in (
            ({"grafanaDashboard": {"enabled": True}}, "files/anomaly-exporter.json"),
            ({"prometheusRule": {"enabled": True}}, "files/prometheus-rules.yaml"),
        ):
            with pytest.raises(helm_python.HelmRenderError, match=re.escape(name)):
                loaded.render(values=values, name=RELEASE)


def test_every_optional_object_at_once(chart: Any) -> None:
    """All optional objects together: names don't collide and everything still validates."""
    on = {"enabled": True}
    values = {
        "serviceMonitor": on,
        "prometheusRule": on,
        "grafanaDashboard": on,
        "persistence": on,
        "networkPolicy": {"enabled": True, "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"},
        "secrets": {"slackWebhookUrl": "https://slack-webhook.example.com/x"},
    }
    out = render(chart, values)
    assert out.kinds() == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    names = [(o["kind"], o["metadata"]["name"]) for o in out.objects]
    assert len(names) == len(set(names))
    policy = out.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert {"port": 53, "protocol": "UDP"} in policy["egress"][0]["ports"], "DNS stays allowed"
    for obj in out.objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)


def test_persistence_refuses_several_replicas(chart: Any) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="ReadWriteOnce"):
        render(chart, {"persistence": {"enabled": True}, "replicaCount": 2})


# --- sharding: a StatefulSet of shards ---------------------------------------------------------------------

SHARDING = load_values(CHART / "ci" / "sharding-values.yaml")
SHARDING_PERSISTENCE = load_values(CHART / "ci" / "sharding-persistence-values.yaml")


def test_sharding_runs_a_statefulset_behind_a_headless_service(chart: Any) -> None:
    out = render(chart, SHARDING)
    assert out.get("Deployment") is None and out.get("PersistentVolumeClaim") is None
    sts = out.one("StatefulSet", FULLNAME)["spec"]
    assert sts["replicas"] == SHARDING["sharding"]["replicas"] == 3
    assert sts["podManagementPolicy"] == "Parallel"
    assert "volumeClaimTemplates" not in sts
    headless = out.one("Service", sts["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == out.service["spec"]["selector"] == sts["selector"]["matchLabels"]
    assert headless["spec"]["ports"] == out.service["spec"]["ports"]
    assert out.service["spec"].get("clusterIP") != "None", "the scraped Service spans all shards"
    # The ServiceMonitor (checked in check_service_monitor) and the PDB select every shard.
    assert out.one("ServiceMonitor") and out.one("PodDisruptionBudget")
    parsed = parse_exporter_args(out.container["args"])
    assert (parsed.shard_count, parsed.shard_index) == (3, "auto")
    # Pod <name>-<i> (its hostname) becomes shard i of 3, as the exporter resolves `auto`: each shard once.
    name = out.one("StatefulSet")["metadata"]["name"]
    shards = [parse_shard(parsed.shard_index, parsed.shard_count, f"{name}-{i}") for i in range(3)]
    assert shards == [Shard(i, 3) for i in range(3)]


def test_sharding_gives_each_shard_its_own_claim(chart: Any) -> None:
    out = render(chart, SHARDING_PERSISTENCE)
    assert out.get("Deployment") is None
    assert out.get("PersistentVolumeClaim") is None, "no shared claim: one per shard instead"
    sts = out.one("StatefulSet")["spec"]
    assert sts["replicas"] == 2, "sharding.replicas, not replicaCount"
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "storage"
    assert claim["metadata"]["annotations"] == {"example.com/backup": "true"}
    assert "storage" not in {v["name"] for v in out.pod["spec"]["volumes"]}
    # The same claim as the Deployment's PVC with the same persistence values.
    single = render(chart, {"persistence": SHARDING_PERSISTENCE["persistence"]}).one("PersistentVolumeClaim")
    assert claim["spec"] == single["spec"]


@pytest.mark.parametrize(
    "values_file",
    [None, CHART / "ci" / "extra-values.yaml", CHART / "ci" / "secrets-values.yaml"],
    ids=["default", "extra-values.yaml", "secrets-values.yaml"],
)
def test_statefulset_runs_the_deployments_pod(chart: Any, values_file: Path | None) -> None:
    """The pod template is shared: checksums, security, probes, resources and volumes are the same in both
    modes; only the shard flags (and, with persistence, where the storage volume comes from) differ."""
    values = load_values(values_file)
    deployment = render(chart, values).pod
    statefulset = render(chart, {**values, "sharding": {"enabled": True, "replicas": 4}}).pod
    args = statefulset["spec"]["containers"][0]["args"]
    assert shard_args(args) == {"--shard.count": "4", "--shard.index": "auto"}
    statefulset["spec"]["containers"][0]["args"] = [a for a in args if not a.startswith("--shard.")]
    if values.get("persistence", {}).get("enabled"):
        volumes = deployment["spec"]["volumes"]
        deployment["spec"]["volumes"] = [v for v in volumes if v["name"] != "storage"]
    assert statefulset == deployment


def test_sharding_refuses_a_shared_existing_claim(chart: Any) -> None:
    values = {**SHARDING_PERSISTENCE, "persistence": {"enabled": True, "existingClaim": "state"}}
    with pytest.raises(helm_python.HelmRenderError, match=r"existingClaim.*own claim"):
        render(chart, values)


def test_sharded_names_fit_kubernetes_limits(chart: Any) -> None:
    """A 63-character full name: the StatefulSet leaves room for its pods' revision-hash label."""
    long_name = "x" * 63
    out = render(chart, {**SHARDING, "fullnameOverride": long_name})
    sts = out.one("StatefulSet")
    assert len(sts["metadata"]["name"]) + len("-") + 10 <= 63
    assert len(sts["spec"]["serviceName"]) <= 63 and out.one("Service", sts["spec"]["serviceName"])
    assert out.one("Service", long_name), "the scraped Service keeps the full name"


def test_notes_tell_the_shards(chart: Any) -> None:
    def notes(values: dict[str, Any]) -> str:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
        return next(text for name, text in manifests.items() if name.endswith("NOTES.txt"))

    sharded = " ".join(notes(SHARDING).split())
    assert f"runs 3 shards, pods {FULLNAME}-0 .. {FULLNAME}-2, each scraping its own series" in sharded
    assert "replicaCount is ignored" in sharded
    assert "shard" not in notes({}).lower()


# --- values.yaml and values.schema.json -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCount": -1}, "/replicaCount"),
        ({"image": {"tag": 5}}, "/image/tag"),
        ({"unknownKey": True}, "unknownKey"),
        ({"service": {"port": "abc"}}, "/service/port"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"serviceMonitor": {"enabeld": True}}, "enabeld"),
        ({"log": {"level": "verbose"}}, "/log/level"),
        ({"securityContext": {"runAsUser": "nobody"}}, "/securityContext/runAsUser"),
        ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        ({"secrets": {"slackWebhookUrl": "hooks.slack.com/x"}}, "/secrets/slackWebhookUrl"),
        ({"extraArgs": ["scheduler.workers=8"]}, "/extraArgs/0"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
        ({"rules": 5}, "/rules"),
        ({"sharding": {"enabled": True, "replicas": 0}}, "/sharding/replicas"),
        ({"sharding": {"shards": 3}}, "shards"),
        (
            {"web": {"config": {"basic_auth_users": {"alice": "plaintext"}}}},
            "/web/config/basic_auth_users/alice",
        ),
        ({"web": {"config": {"tls_config": {}}}}, "tls_config"),
        ({"serviceMonitor": {"scheme": "ftp"}}, "/serviceMonitor/scheme"),
    ],
)
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        chart.render(values=values, name=RELEASE)


def test_values_yaml_has_a_comment_above_every_key() -> None:
    """Every key the schema describes by name is preceded by a comment line in values.yaml."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    list_indent: int | None = None  # inside a list item: its keys belong to the item, not to the schema
    missing = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = indent if stripped.startswith("- ") else None
        match = re.match(r"([A-Za-z0-9_.-]+):(\s|$)", stripped)
        if not match:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(1)))
        if schema_node(schema, [key for _, key in stack]) is None:
            continue
        previous = next(p for p in reversed(lines[:number]) if p.strip())
        if not previous.strip().startswith("#"):
            missing.append(".".join(key for _, key in stack))
    assert not missing, f"values.yaml keys without a comment above them: {missing}"


def schema_node(schema: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path:
        options = [node, *node.get("oneOf", [])] if node else []
        node = next((o["properties"][key] for o in options if key in o.get("properties", {})), None)
    return node


def test_schema_describes_every_default_value(chart: Any) -> None:
    """The defaults pass the schema, and the schema is strict at the top: every default key is declared."""
    chart.validate_schema(chart.values)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(chart.values) <= set(schema["properties"])
