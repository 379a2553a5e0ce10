"""GET /metrics: what prometheus_client's make_wsgi_app serves, with the per-series gauges spliced in as
rendered when their snapshots were published (exporter/exposition.py) instead of formatted per scrape.

Same answers as make_wsgi_app(registry): content negotiation through Accept (Prometheus text 0.0.4 or
1.0.0, OpenMetrics), `?name[]=` filtering, gzip when Accept-Encoding allows it, OPTIONS and 405 for other
methods. Everything other than the pre-rendered gauges (health, alerts, process metrics) is still
formatted by prometheus_client's own encoder, family by family in registry order.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric

from exporter.exposition import SeriesFamily, deflate

Piece = tuple[bytes, bytes | None]  # (text, its raw deflate if rendered ahead; None: deflate at scrape)
_EOF = b"# EOF\n"
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty final deflate block (fixed Huffman): ends the spliced stream


class Collects(Protocol):
    """A registry, a restricted registry, or anything else prometheus_client's encoders read."""

    def collect(self) -> Iterable[Metric]: ...


class MetricsEndpoint:
    """WSGI app for /metrics over a registry whose AnomalyCollector yields SeriesFamily gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._other_methods = make_wsgi_app(registry)  # OPTIONS, 405: exactly its answers

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return self._other_methods(environ, start_response)
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT") or "")
        params = parse_qs(environ.get("QUERY_STRING", ""))
        registry: Collects = self._registry
        if "name[]" in params:  # as make_wsgi_app (which searches only collectors registered with names)
            registry = self._registry.restricted_registry(params["name[]"])
        pieces = exposition(registry, encoder, content_type)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING") or ""):
            body = gzip_pieces(pieces)
            headers.append(("Content-Encoding", "gzip"))
        else:
            body = b"".join(text for text, _ in pieces)
        start_response("200 OK", headers)
        return [body]


class _Families:
    """A fixed list of families, for prometheus_client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def exposition(registry: Collects, encoder: Callable[[Any], bytes], content_type: str) -> list[Piece]:
    """The registry's exposition as pieces in order: what `encoder` writes, except that SeriesFamily
    samples are the text rendered at publish time (HELP and TYPE still come from `encoder`)."""
    openmetrics = content_type.startswith("application/openmetrics-text")
    _, found, escaping = content_type.partition("escaping=")
    escaping = escaping.split(";")[0].strip() if found else "underscores"  # none: prometheus_client's default
    pieces: list[Piece] = []
    run: list[Metric] = []  # families for the encoder, written together

    def flush() -> None:
        if run:
            text = encoder(_Families(run))
            pieces.append((text.removesuffix(_EOF) if openmetrics else text, None))
            run.clear()

    for family in registry.collect():
        spliced = family.spliceable(escaping) if isinstance(family, SeriesFamily) else None
        if spliced is None:  # anything else, or a prerendered family under an escaping it does not fit
            run.append(family)
            continue
        run.append(Metric(family.name, family.documentation, family.type))  # HELP and TYPE only
        flush()
        pieces.extend(spliced)
    flush()
    if openmetrics:
        pieces.append((_EOF, None))
    return pieces


def gzip_pieces(pieces: Sequence[Piece]) -> bytes:
    """One gzip member: deflate pieces spliced (pre-compressed ones as they are, the rest compressed now),
    an empty final block, then the CRC-32 and length of the whole text."""
    out = [_GZIP_HEADER]
    crc, size = 0, 0
    pending: list[bytes] = []
    for text, deflated in pieces:
        crc = zlib.crc32(text, crc)
        size += len(text)
        if deflated is None:
            pending.append(text)
            continue
        if pending:
            out.append(deflate(b"".join(pending)))
            pending = []
        out.append(deflated)
    if pending:
        out.append(deflate(b"".join(pending)))
    out += [_FINAL_BLOCK, struct.pack("<II", crc, size & 0xFFFFFFFF)]
    return b"".join(out)
