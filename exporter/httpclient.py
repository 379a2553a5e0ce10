"""What every outgoing HTTP client of ours needs from its config: headers, auth, TLS, secrets to scrub.

The Prometheus reader and the notification targets talk to different servers with the same options
(bearer token or basic auth, CA file, client certificate, `insecure_skip_verify`); this turns those options
into the keyword arguments `requests` takes, once, the same way for both.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from dataclasses import dataclass, field

from exporter import __version__
from exporter.config import BasicAuth, TLSConfig
from exporter.secret import Secret

log = logging.getLogger(__name__)

USER_AGENT = f"prometheus-anomaly-exporter/{__version__}"


@dataclass
class ClientOptions:
    """`requests` arguments (headers, auth, verify, cert) plus the credential strings to scrub from any
    text we did not write ourselves (server error bodies, exception messages)."""

    headers: dict[str, str]
    auth: tuple[str, str] | None = None
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    secrets: list[str] = field(default_factory=list)


def client_options(
    where: str,
    tls: TLSConfig,
    bearer_token: Secret | None,
    basic_auth: BasicAuth | None,
    headers: dict[str, str],
) -> ClientOptions:
    """Options for a client of `where` (named in the insecure-TLS warning; never a secret). The caller has
    already refused bearer_token together with basic_auth, in its own words."""
    opts = ClientOptions(headers={"User-Agent": USER_AGENT, **headers})
    if bearer_token is not None:
        token = bearer_token.reveal().strip()  # files often end in a newline, illegal in a header
        opts.headers["Authorization"] = f"Bearer {token}"
        opts.secrets.append(token)
    if basic_auth is not None:
        opts.auth = (basic_auth.username, basic_auth.password.reveal())
        opts.secrets.append(opts.auth[1])
        # The header itself too, as a server echoing it back would quote it (requests encodes latin-1).
        for encoding in ("latin-1", "utf-8"):
            with contextlib.suppress(UnicodeEncodeError):
                pair = f"{opts.auth[0]}:{opts.auth[1]}".encode(encoding)
                opts.secrets.append(base64.b64encode(pair).decode())
    opts.verify = False if tls.insecure_skip_verify else (tls.ca_file or True)
    opts.cert = (tls.cert_file, tls.key_file) if tls.cert_file and tls.key_file else tls.cert_file
    if tls.insecure_skip_verify:
        log.warning("TLS certificate verification is disabled for %s (insecure_skip_verify)", where)
    return opts
