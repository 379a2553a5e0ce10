"""--web.config.file: TLS, basic auth and response headers of the exporter's own endpoint, in the format of
Prometheus' exporter-toolkit, so one web config file serves this exporter and the Go ones alike.

    tls_server_config: {cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version}
    http_server_config: {headers: {...}, http2: bool}
    basic_auth_users: {user: bcrypt hash}

Every problem is reported at once with its key. Keys the toolkit knows but this exporter cannot honour are
refused by name rather than silently ignored. Relative file paths resolve against the file's directory, as
the toolkit does.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from exporter.config import ConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go asks for a client certificate without verifying it; Python's ssl module has no verify callback, so it
# cannot. Refused with this reason instead of being served as something weaker or stricter than written.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
# The toolkit's own list (and allowed values) of headers a web config may set.
EXTRA_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
# What a bcrypt hash looks like (htpasswd -B writes $2y$, Python's bcrypt $2b$): variant, cost, 22 + 31 chars.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")

_TOP = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
_HTTP = ("headers", "http2")
# exporter-toolkit keys this exporter does not implement: named as such, not as typos.
_UNSUPPORTED = {
    "": ("rate_limit",),
    "tls_server_config": (
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
    ),
}


class WebConfigError(ConfigError):
    """Every problem found in a web config file, one `key: message` each."""


@dataclass(frozen=True)
class TLSServerConfig:
    """The server side of TLS; file paths are absolute (resolved against the web config's directory)."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    def files(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    def context(self) -> ssl.SSLContext:
        """A fresh server context from the files as they are now; WebConfigError names what failed."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        errors = []
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            errors.append(
                f"tls_server_config.cert_file/key_file: cannot load {self.cert_file!r} with "
                f"{self.key_file!r}: {_reason(exc)}"
            )
        if self.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                errors.append(
                    f"tls_server_config.client_ca_file: cannot load {self.client_ca_file!r}: {_reason(exc)}"
                )
        if errors:
            raise WebConfigError(errors)
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]
        return ctx


@dataclass(frozen=True)
class WebConfig:
    """What the web config file asks for; the default (no file) is plain HTTP, no auth, no extra headers."""

    tls: TLSServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def max_cost(self) -> int:
        """The highest bcrypt cost among the users: unknown users are checked against a decoy of this cost."""
        return max((int(h[4:6]) for h in self.users.values()), default=4)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def load_web_config(path: str) -> WebConfig:
    """Read, validate and try out (certificates and keys load) a web config file, or raise WebConfigError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise WebConfigError([f"cannot read web config file: {exc.strerror or exc}"], source=path) from None
    config = parse_web_config(data, path)
    if config.tls is not None:
        try:
            config.tls.context()
        except WebConfigError as exc:
            raise WebConfigError(exc.errors, source=path) from None
    return config


def parse_web_config(data: bytes, path: str) -> WebConfig:
    """Validate web config text (relative paths against `path`'s directory); file contents are not read."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WebConfigError([f"not valid UTF-8 (byte {exc.start})"], source=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise WebConfigError(
            [f"YAML syntax error: {where}{getattr(exc, 'problem', exc)}"], source=path
        ) from None
    errors: list[str] = []
    doc = _mapping(doc if doc is not None else {}, "", _TOP, errors)
    base = os.path.dirname(os.path.abspath(path))
    tls = _tls(_mapping(doc.get("tls_server_config") or {}, "tls_server_config", _TLS, errors), base, errors)
    http = _mapping(doc.get("http_server_config") or {}, "http_server_config", _HTTP, errors)
    if "http2" in http and not isinstance(http["http2"], bool):
        errors.append(f"http_server_config.http2: expected true or false, got {http['http2']!r}")
    headers = _headers(
        _mapping(http.get("headers") or {}, "http_server_config.headers", None, errors), errors
    )
    users = _users(_mapping(doc.get("basic_auth_users") or {}, "basic_auth_users", None, errors), errors)
    if errors:
        raise WebConfigError(errors, source=path)
    return WebConfig(tls=tls, users=MappingProxyType(users), headers=MappingProxyType(headers))


def _mapping(node: Any, where: str, known: tuple[str, ...] | None, errors: list[str]) -> dict[str, Any]:
    """`node` as a dict; with `known`, unknown keys are errors (a toolkit key we lack says so)."""
    label = where or "top level"
    if not isinstance(node, dict):
        errors.append(f"{label}: expected a mapping, got {type(node).__name__}")
        return {}
    if known is None:
        return node
    for key in node:
        path = f"{where}.{key}" if where else str(key)
        if key in _UNSUPPORTED.get(where, ()):
            errors.append(f"{path}: not supported by this exporter (an exporter-toolkit option it lacks)")
        elif key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            errors.append(f"{path}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return {k: v for k, v in node.items() if k in known}


def _tls(section: dict[str, Any], base: str, errors: list[str]) -> TLSServerConfig | None:
    for key, value in section.items():
        if value is not None and not isinstance(value, str):
            errors.append(f"tls_server_config.{key}: expected a string, got {value!r}")
    values = {k: v for k, v in section.items() if isinstance(v, str) and v}
    if not values:  # as the toolkit: nothing set = TLS off
        return None
    n = len(errors)
    for key in ("cert_file", "key_file"):
        if key not in values:
            errors.append(f"tls_server_config.{key}: required when tls_server_config is set")
    auth = values.get("client_auth_type", "NoClientCert")
    if auth in UNVERIFIED_CLIENT_AUTH:
        errors.append(
            f"tls_server_config.client_auth_type: {auth} is not supported (Python's ssl module cannot ask "
            "for a client certificate without verifying it); use VerifyClientCertIfGiven or "
            "RequireAndVerifyClientCert with client_ca_file"
        )
    elif auth not in CLIENT_AUTH:
        choices = ", ".join([*CLIENT_AUTH, *UNVERIFIED_CLIENT_AUTH])
        errors.append(f"tls_server_config.client_auth_type: invalid value {auth!r} (one of {choices})")
    elif auth == "NoClientCert" and "client_ca_file" in values:
        errors.append(
            "tls_server_config.client_ca_file: set without a client_auth_type that verifies client "
            "certificates (VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        )
    elif auth != "NoClientCert" and "client_ca_file" not in values:
        errors.append(f"tls_server_config.client_ca_file: required by client_auth_type {auth}")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        versions[key] = values.get(key, default)
        if versions[key] not in TLS_VERSIONS:
            choices = ", ".join(TLS_VERSIONS)
            errors.append(f"tls_server_config.{key}: invalid value {versions[key]!r} (one of {choices})")
    lo, hi = versions["min_version"], versions["max_version"]
    if lo in TLS_VERSIONS and hi in TLS_VERSIONS and TLS_VERSIONS[lo] > TLS_VERSIONS[hi]:
        errors.append(f"tls_server_config.max_version: {hi} is below min_version {lo}")
    if len(errors) > n:
        return None

    def resolve(key: str) -> str | None:
        return os.path.join(base, values[key]) if key in values else None

    return TLSServerConfig(
        cert_file=resolve("cert_file") or "",
        key_file=resolve("key_file") or "",
        client_auth_type=auth,
        client_ca_file=resolve("client_ca_file"),
        min_version=lo,
        max_version=hi,
    )


def _headers(section: dict[str, Any], errors: list[str]) -> dict[str, str]:
    headers = {}
    for name, value in section.items():
        where = f"http_server_config.headers.{name}"
        if name not in EXTRA_HEADERS:
            errors.append(f"{where}: this header can not be configured (allowed: {', '.join(EXTRA_HEADERS)})")
        elif not isinstance(value, str) or "\n" in value or "\r" in value:
            errors.append(f"{where}: expected a one-line string, got {value!r}")
        elif EXTRA_HEADERS[name] and value not in EXTRA_HEADERS[name]:
            errors.append(f"{where}: invalid value {value!r} (one of {', '.join(EXTRA_HEADERS[name])})")
        else:
            headers[name] = value
    return headers


def _users(section: dict[str, Any], errors: list[str]) -> dict[str, bytes]:
    users = {}
    for user, hashed in section.items():
        where = f"basic_auth_users.{user}"  # the user name only: never the hash
        if not isinstance(user, str) or not user or ":" in user:
            errors.append(f"{where}: a user name must be a non-empty string without ':'")
            continue
        match = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            errors.append(
                f"{where}: not a bcrypt hash ($2y$, $2b$ or $2a$, cost 04-31, 60 characters; "
                "make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
            )
            continue
        users[user] = hashed.encode()
    return users
