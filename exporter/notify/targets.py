"""One HTTP endpoint per target: turns a Batch into a request and the answer into success or DeliveryError.

Targets do not retry; the Delivery queue in front of each one does. Slack and webhook URLs carry tokens, so
a target is named after its receiver and no URL, token or password reaches a log line or an exception.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests

from exporter.config import ReceiverConfig
from exporter.httpclient import client_options
from exporter.notification import Batch
from exporter.notify.payloads import alertmanager_alerts, slack_message, webhook_payload
from exporter.secret import Secret

_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class DeliveryError(Exception):
    """A send failed. `retryable`: the same request may succeed later; `retry_after`: the server's wish,
    in seconds, when it gave one (Retry-After). The message never contains a secret."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Target(ABC):
    """Where one receiver's notifications go over HTTP.

    `name` identifies the target in logs and as the `target` metrics label: the receiver's name, or
    `<receiver>/<i>` for the i-th URL of an Alertmanager receiver that lists several (an HA pair).
    `description` adds the type (and, for Alertmanager, the URL without credentials or query).
    """

    kind: str

    def __init__(
        self,
        receiver: ReceiverConfig,
        url: Secret,
        name: str,
        *,
        session: requests.Session | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if receiver.bearer_token is not None and receiver.basic_auth is not None:
            raise ValueError(f"receiver {receiver.name}: bearer_token and basic_auth are mutually exclusive")
        self.receiver = receiver.name
        self.name = name
        self._url = url.reveal()
        self._timeout = receiver.timeout
        self._now = now
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        opts = client_options(
            str(self),
            receiver.tls,
            receiver.bearer_token,
            receiver.basic_auth,
            {"Content-Type": "application/json"},
        )
        self._headers, self._auth, self._verify, self._cert = opts.headers, opts.auth, opts.verify, opts.cert
        self._secrets = sorted({s for s in self._url_secrets() + opts.secrets if s}, key=len, reverse=True)

    @property
    def description(self) -> str:
        return f"{self.kind} receiver {self.name!r}"

    def __str__(self) -> str:
        return self.description

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"

    @abstractmethod
    def body(self, batch: Batch, now: float) -> Any:
        """The JSON document for `batch`, or None when there is nothing to send."""

    def endpoint(self) -> str:
        return self._url

    def _url_secrets(self) -> list[str]:
        """Every part of the URL that may be a credential: the URL itself, its path and query (Slack puts
        its token in the path), their longer pieces (error text may show them alone), the password."""
        parts = urlsplit(self._url)
        found = [self._url, parts.password or "", parts.query]
        if parts.path not in ("", "/"):
            found += [parts.path, urlunsplit(("", "", parts.path, parts.query, ""))]
        pieces = parts.path.split("/") + [v for _, v in parse_qsl(parts.query)]
        return found + [p for p in pieces if len(p) >= 8]

    def send(self, batch: Batch) -> None:
        """POST the batch once; raise DeliveryError unless the server answered 2xx."""
        body = self.body(batch, self._now())
        if body is None:
            return
        data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        try:
            resp = self._session.post(
                self.endpoint(),
                data=data,
                headers=self._headers,
                auth=self._auth,
                verify=self._verify,
                cert=self._cert,
                timeout=self._timeout,
                allow_redirects=False,  # requests turns a redirected POST into a GET; say so instead
            )
        except _TRANSIENT as exc:
            raise DeliveryError(f"{self}: {self._scrub(_cause(exc))}", retryable=True) from None
        except (
            requests.RequestException
        ) as exc:  # invalid URL, bad TLS files...: configuration, not transient
            raise DeliveryError(f"{self}: {self._scrub(_cause(exc))}", retryable=False) from None
        with resp:
            self._check(resp)

    def _check(self, resp: requests.Response) -> None:
        status = resp.status_code
        if 200 <= status < 300:
            return
        detail = f"HTTP {status}"
        if 300 <= status < 400:
            detail += " redirect (not followed; configure the final URL)"
        elif excerpt := _excerpt(resp):
            detail += f": {excerpt}"
        message = f"{self}: {self._scrub(detail)}"
        if status in (408, 429) or status >= 500:
            retry_after = _retry_after(resp, self._now()) if status in (429, 503) else None
            raise DeliveryError(message, retryable=True, retry_after=retry_after)
        raise DeliveryError(message, retryable=False)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<secret>")
        return text

    def close(self) -> None:
        if self._own_session:
            self._session.close()


class AlertmanagerTarget(Target):
    """One Alertmanager (`POST <url>/api/v2/alerts`). Each URL of an HA pair is its own target, so every
    instance gets every alert and a failing one is retried without holding up the other."""

    kind = "alertmanager"

    @property
    def description(self) -> str:
        base = urlsplit(self._url)
        where = urlunsplit((base.scheme, base.netloc.rpartition("@")[2], base.path, "", ""))
        return f"alertmanager receiver {self.name!r} ({where})"  # no credentials, no query

    def endpoint(self) -> str:
        base = urlsplit(self._url)
        return urlunsplit(base._replace(path=base.path.rstrip("/") + "/api/v2/alerts"))

    def _url_secrets(self) -> list[str]:
        """An Alertmanager URL is not secret, only its password and query (e.g. an access token)."""
        parts = urlsplit(self._url)
        return [parts.password or "", parts.query, *(v for _, v in parse_qsl(parts.query))]

    def body(self, batch: Batch, now: float) -> Any:
        return alertmanager_alerts(batch, now) or None


class SlackTarget(Target):
    """A Slack incoming webhook: one message per batch. Slack answers 200 `ok`; 4xx are final."""

    kind = "slack"

    def body(self, batch: Batch, now: float) -> Any:
        return slack_message(batch) if batch.notifications else None


class WebhookTarget(Target):
    """Any HTTP endpoint that understands Alertmanager's webhook payload (version 4)."""

    kind = "webhook"

    def body(self, batch: Batch, now: float) -> Any:
        return webhook_payload(batch, self.receiver, now) if batch.notifications else None


_TYPES: dict[str, type[Target]] = {
    "alertmanager": AlertmanagerTarget,
    "slack": SlackTarget,
    "webhook": WebhookTarget,
}


def build_targets(receiver: ReceiverConfig, *, now: Callable[[], float] = time.time) -> list[Target]:
    """One target per URL of the receiver, named as described in Target."""
    cls = _TYPES.get(receiver.type)
    if cls is None:
        raise ValueError(f"receiver {receiver.name}: unknown type {receiver.type!r}")
    if not receiver.urls:
        raise ValueError(f"receiver {receiver.name}: no URL")
    several = len(receiver.urls) > 1
    return [
        cls(receiver, url, f"{receiver.name}/{i}" if several else receiver.name, now=now)
        for i, url in enumerate(receiver.urls)
    ]


def _cause(exc: requests.RequestException) -> str:
    """The innermost reason of a requests error (e.g. "Connection refused"), not urllib3's whole chain."""
    reason: BaseException = exc
    while True:
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException):
            inner = reason.args[0] if reason.args and isinstance(reason.args[0], BaseException) else None
        if inner is None or inner is reason:
            break
        reason = inner
    return f"{type(exc).__name__}: {reason}"


def _excerpt(resp: requests.Response, limit: int = 200) -> str:
    """The start of the response body, whitespace collapsed (Slack's error codes are short plain text)."""
    return " ".join(resp.content[: limit * 2].decode("utf-8", "replace").split())[:limit]


def _retry_after(resp: requests.Response, now: float) -> float | None:
    """Retry-After in seconds from delta-seconds or an HTTP date; None when absent or unreadable."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
