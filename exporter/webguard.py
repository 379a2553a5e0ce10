"""The web config at work: TLS contexts for new connections, basic auth and extra headers for every request.

The file is re-read on every request and every new TLS connection, as exporter-toolkit does, so users,
headers and certificates (e.g. rotated by cert-manager) change without a restart. Unchanged bytes are not
parsed again and unchanged certificate files don't rebuild the TLS context. Turning TLS on or off needs a
restart (the listener's protocol is chosen at startup). A file that became invalid fails closed: requests
get 500 and TLS handshakes fail, with one error logged per distinct problem, until it is fixed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import bcrypt

from exporter.webconfig import TLSServerConfig, WebConfig, WebConfigError, parse_web_config

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

CACHE_TTL = 300.0  # seconds a verified user/password pair skips bcrypt: longer than usual scrape intervals
CACHE_SIZE = 1024
_DECOY_PASSWORD = b"decoy: only the cost of hashing it matters"


class WebGuard:
    """TLS, basic auth and headers from a web config file, re-read as described in the module docstring."""

    def __init__(self, path: str, config: WebConfig) -> None:
        """`config`: the file as validated at startup (load_web_config); it decides whether TLS is on."""
        self.path = path
        self.tls = config.tls is not None
        self._lock = threading.Lock()
        self._raw: bytes | None = None  # the bytes self._config was parsed from; None: not read yet
        self._config = config
        self._context: tuple[tuple[TLSServerConfig, tuple[bytes, ...]], ssl.SSLContext] | None = None
        self._error: str | None = None  # the last problem logged, so it is logged once
        self._cache = _VerifiedCache()
        self._cache_key = os.urandom(32)  # cache keys are HMACs under it: no password kept, none derivable
        self._bcrypt_lock = threading.Lock()  # one bcrypt at a time: failed logins can't take every core
        self._decoys: dict[int, bytes] = {}
        self._prepare(config)

    # --- the file -----------------------------------------------------------------------------------------

    def config(self) -> WebConfig:
        """The web config as the file says now; WebConfigError (logged once) if it can't be used."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            self._fail(f"{self.path}: cannot read web config file: {exc.strerror or exc}")
        with self._lock:
            if data == self._raw:
                return self._config
        try:
            config = parse_web_config(data, self.path)
        except WebConfigError as exc:
            self._fail(str(exc).replace("\n", " "))
        if (config.tls is not None) != self.tls:
            state = "on" if self.tls else "off"
            self._fail(f"{self.path}: tls_server_config: TLS was {state} at startup; restart to change it")
        self._prepare(config)
        with self._lock:
            self._raw, self._config = data, config
        self._recovered()
        return config

    def ssl_context(self) -> ssl.SSLContext:
        """The server context for a new connection, rebuilt when the config or a certificate file changed."""
        tls = self.config().tls
        assert tls is not None, "ssl_context() is only called when TLS is on"
        contents = []
        for name in tls.files():
            try:
                with open(name, "rb") as fh:
                    contents.append(fh.read())
            except OSError as exc:
                self._fail(f"{self.path}: cannot read {name!r}: {exc.strerror or exc}")
        key = (tls, tuple(contents))
        with self._lock:
            if self._context is not None and self._context[0] == key:
                return self._context[1]
        try:
            context = tls.context()
        except WebConfigError as exc:
            self._fail(f"{self.path}: " + "; ".join(exc.errors))
        with self._lock:
            self._context = (key, context)
        self._recovered()
        return context

    def _fail(self, message: str) -> NoReturn:
        with self._lock:
            new, self._error = message != self._error, message
        if new:
            log.error("web config unusable, refusing requests until it is fixed: %s", message)
        raise WebConfigError([message])

    def _recovered(self) -> None:
        with self._lock:
            was, self._error = self._error, None
        if was is not None:
            log.info("web config file %s is usable again", self.path)

    # --- basic auth ---------------------------------------------------------------------------------------

    def _prepare(self, config: WebConfig) -> None:
        """Make the decoy hash now, so the first request for an unknown user isn't slower than the rest."""
        if config.users:
            self._decoy(config.max_cost())

    def _decoy(self, cost: int) -> bytes:
        with self._bcrypt_lock:
            if cost not in self._decoys:
                self._decoys[cost] = bcrypt.hashpw(_DECOY_PASSWORD, bcrypt.gensalt(cost))
            return self._decoys[cost]

    def authenticate(self, config: WebConfig, authorization: str | None) -> bool:
        """True when no users are configured, or the Authorization header names one with its password.

        An unknown user is checked against a decoy hash of the highest configured cost, so it takes as long
        as a wrong password. Successes are remembered for CACHE_TTL under an HMAC of (user, hash, password)
        with a per-process random key; a changed hash or a removed user never matches an old entry.
        """
        if not config.users:
            return True
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = config.users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = self._decoy(config.max_cost())
        key = hmac.new(self._cache_key, _joined(user.encode(), hashed, password), hashlib.sha256).digest()
        if known and self._cache.hit(key):
            return True
        with self._bcrypt_lock:  # bcrypt refuses > 72 bytes; compare the first 72 anyway to take as long
            ok = bcrypt.checkpw(password[:72], hashed)
        ok = ok and known and len(password) <= 72
        if ok:
            self._cache.add(key)
        return ok

    # --- the WSGI side ------------------------------------------------------------------------------------

    def wrap(self, app: WSGIApp) -> WSGIApp:
        """`app` behind basic auth (every path, as exporter-toolkit), with the configured headers added."""

        def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            try:
                config = self.config()
            except WebConfigError:
                return _plain(start_response, "500 Internal Server Error", "Internal Server Error\n")
            extra = list(config.headers.items())

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                return start_response(status, [*headers, *extra], exc_info)

            if not self.authenticate(config, environ.get("HTTP_AUTHORIZATION")):
                return _plain(start, "401 Unauthorized", "Unauthorized\n", [("WWW-Authenticate", "Basic")])
            return app(environ, start)

        return guarded


def _basic_credentials(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, password) from `Basic base64(user:password)`, or None for anything else."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _joined(*parts: bytes) -> bytes:
    """Length-prefixed, so no two different tuples give the same bytes."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _plain(
    start_response: StartResponse, status: str, text: str, headers: list[tuple[str, str]] | None = None
) -> Iterable[bytes]:
    data = text.encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), *(headers or [])],
    )
    return [data]


class _VerifiedCache:
    """Keys of recently verified credentials, each valid CACHE_TTL seconds; at most CACHE_SIZE of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[bytes, float] = {}  # insertion order = oldest first

    def hit(self, key: bytes) -> bool:
        with self._lock:
            expiry = self._expiry.get(key)
            if expiry is not None and expiry <= time.monotonic():
                del self._expiry[key]
                return False
            return expiry is not None

    def add(self, key: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            self._expiry.pop(key, None)
            if len(self._expiry) >= CACHE_SIZE:
                self._expiry = {k: t for k, t in self._expiry.items() if t > now}
                while len(self._expiry) >= CACHE_SIZE:
                    del self._expiry[next(iter(self._expiry))]
            self._expiry[key] = now + CACHE_TTL
