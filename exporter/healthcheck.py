"""`anomaly-exporter healthcheck`: is the exporter on this host serving HTTP? For container HEALTHCHECKs.

What it checks is described once, in its --help text: exporter.flags.HEALTHCHECK_HELP."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import socket
import ssl
import sys
from dataclasses import dataclass

from exporter.flags import DEFAULT_LISTEN, parse_args, parse_listen_address
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

_REQUIRE_CERT = ("RequireAnyClientCert", "RequireAndVerifyClientCert")
# what a TLS server that insists on a client certificate answers a client that has none (TLS 1.3 / 1.2)
_NO_CLIENT_CERT = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "BAD_CERTIFICATE")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    web_config_file: str = ""


def run(args: argparse.Namespace) -> int:
    running = _running_flags(args.pid)
    listen = args.listen or (running.listen if running is not None else DEFAULT_LISTEN)
    web_config_file = args.web_config_file
    if web_config_file is None:
        web_config_file = running.web_config_file if running is not None else ""
    try:
        host, port = parse_listen_address(listen)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        healthy, detail = check(Target(_loopback(host), port, web_config_file), args.timeout)
    except WebConfigError as exc:
        print(f"unhealthy: the web config cannot be used: {exc}", file=sys.stderr)
        return 1
    print(detail, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def check(target: Target, timeout: float) -> tuple[bool, str]:
    """(healthy, what was seen)."""
    web = load_web_config(target.web_config_file) if target.web_config_file else WebConfig()
    where = f"{target.host}:{target.port}"
    conn: http.client.HTTPConnection
    if web.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        where = "https://" + where
        if web.tls.client_auth_type in _REQUIRE_CERT:
            return _handshake(target, context, timeout, where)
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        where = "http://" + where
    try:
        conn.request("GET", "/-/healthy", headers={"User-Agent": "anomaly-exporter-healthcheck"})
        status = conn.getresponse().status
    except ssl.SSLError as exc:
        return False, f"unhealthy: TLS with {where} failed: {exc}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"unhealthy: {where}/-/healthy: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if status == 200 or (status == 401 and web.users):
        return True, f"healthy: {where}/-/healthy answered {status}"
    return False, f"unhealthy: {where}/-/healthy answered {status}"


def _handshake(target: Target, context: ssl.SSLContext, timeout: float, where: str) -> tuple[bool, str]:
    """With client certificates required, no request can get through without one; what can be checked is
    that the server completes a TLS handshake (TLS 1.3: the client's side completes before the server judges
    its certificate) or refuses it for want of a certificate (TLS 1.2)."""
    try:
        with (
            socket.create_connection((target.host, target.port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            version = tls.version()
    except ssl.SSLError as exc:
        if any(reason in str(exc).upper() for reason in _NO_CLIENT_CERT):
            return True, f"healthy: {where} serves TLS and asks for a client certificate ({exc.reason})"
        return False, f"unhealthy: TLS with {where} failed: {exc}"
    except OSError as exc:
        return False, f"unhealthy: {where}: {type(exc).__name__}: {exc}"
    return True, f"healthy: {where} completed a {version} handshake (client certificates required)"


def _running_flags(pid: int) -> argparse.Namespace | None:
    """The serving flags of process `pid` if it is an exporter serving HTTP (run or demo), else None; a
    relative --web.config.file is resolved against that process' working directory."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # NUL-terminated arguments; an empty one (--web.config.file "") is an argument too
    argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0")[:-1]]
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "anomaly-exporter":
            rest = argv[i + 1 :]
            break
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] == "exporter":
            rest = argv[i + 2 :]
            break
    else:
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text is no help here
            parsed = parse_args(rest)
    except SystemExit:  # its flags do not parse as ours (another version?): fall back to the defaults
        return None
    if parsed.command not in ("run", "demo"):  # check, backtest, another healthcheck...: nothing serves
        return None
    if parsed.web_config_file and not os.path.isabs(parsed.web_config_file):
        try:  # needs more access to the process than its command line does
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return parsed  # relative to our own directory, then: the image's WORKDIR is the same
        parsed.web_config_file = os.path.join(cwd, parsed.web_config_file)
    return parsed


def _loopback(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host
