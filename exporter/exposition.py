"""The per-series gauges' exposition text, rendered once per published snapshot instead of on every scrape.

prometheus_client spends ~300 ms formatting 50,000 samples one by one (10,000 series × 5 gauges). A rule's
sample lines are instead rendered in its scoring thread when it publishes (label text kept per series from
cycle to cycle, floats formatted in bulk) and stored with the snapshot, plain and deflated; /metrics splices
the bytes (exporter/metrics_endpoint.py). The lines are byte for byte what prometheus_client writes for the
same samples, in both text formats (tests/test_exposition.py renders both ways and compares).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from exporter.store import LabelPairs, RuleSnapshot

SERIES_GAUGES = (  # (name, RuleSnapshot attribute, HELP)
    (
        "anomaly_score",
        "score",
        "Anomaly score: 0 = as expected, 1 = at the rule's threshold, higher = further out.",
    ),
    ("anomaly_observed", "value", "The series' value at the scored time: what anomaly_score judged."),
    ("anomaly_expected", "expected", "Value the model expected for the series at the scored time."),
    ("anomaly_expected_lower", "lower", "Lower edge of the expected band (anomaly_score 1 below it)."),
    ("anomaly_expected_upper", "upper", "Upper edge of the expected band (anomaly_score 1 above it)."),
)
# Escaping schemes (the Accept header's `escaping=`) under which legacy names are written unchanged. Under
# "dots" and "values" prometheus_client rewrites even legacy names, so those scrapes take its slow path.
SPLICEABLE_ESCAPINGS = ("underscores", "allow-utf-8")
_LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Level 1: the 5 blocks of 10,000 series take 16 ms and give 704 KB; level 6 took 35 ms for 642 KB.
_DEFLATE_LEVEL = 1


@dataclass(frozen=True, eq=False)
class RenderedSeries:
    """One rule's sample lines, one block per SERIES_GAUGES family (b"" if it has none).

    `deflated` holds each block as raw deflate ending in a sync flush, so blocks compressed separately can
    be spliced into one gzip stream. Only valid while every label name is a legacy one (`legacy_names`):
    other names are escaped per scrape, so such a rule's gauges are left to prometheus_client.
    """

    text: tuple[bytes, ...]
    deflated: tuple[bytes, ...]
    legacy_names: bool
    label_text: Mapping[LabelPairs, str]  # '{name="value",...} ' per series, for the next cycle's render
    other_names: frozenset[LabelPairs]  # the label sets with a name that is not a legacy one


def render(snapshot: RuleSnapshot, previous: RenderedSeries | None = None) -> RenderedSeries:
    """Render a snapshot's sample lines, reusing the label text of series `previous` already had."""
    cache = previous.label_text if previous is not None else {}
    other: set[LabelPairs] = set()

    def new_label_text(pairs: LabelPairs) -> str:
        text, legacy = _label_text(pairs)
        if not legacy:
            other.add(pairs)
        return text

    get = cache.get
    texts = [get(pairs) or new_label_text(pairs) for pairs in snapshot.labels]
    label_text = dict(zip(snapshot.labels, texts, strict=True))
    if previous is not None and previous.other_names:
        other.update(pairs for pairs in previous.other_names if pairs in label_text)
    blocks = []
    for name, attr, _ in SERIES_GAUGES:
        values = getattr(snapshot, attr)
        blocks.append(b"" if values is None else _lines(name, texts, values))
    return RenderedSeries(
        text=tuple(blocks),
        deflated=tuple(deflate(b) if b else b"" for b in blocks),
        legacy_names=not other,
        label_text=label_text,
        other_names=frozenset(other),
    )


def deflate(data: bytes) -> bytes:
    """Raw deflate ending in a sync flush: byte-aligned and not final, so pieces can be concatenated."""
    compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _label_text(pairs: LabelPairs) -> tuple[str, bool]:
    """The `{...} ` part of a sample line as prometheus_client writes it (sorted names, escaped values);
    and whether every name is a legacy one (written the same under every spliceable escaping)."""
    items = sorted(dict(pairs).items())
    if not items:
        return " ", True
    legacy = all(_LEGACY_LABEL_NAME.fullmatch(k) and not k.startswith("__") for k, _ in items)
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in items) + "} ", legacy


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _lines(name: str, texts: Sequence[str], values: np.ndarray) -> bytes:
    """`name{labels} value` per series, NaN (unknown) left out, as one UTF-8 block."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (len(texts),):
        raise ValueError(f"{name}: {v.shape} values for {len(texts)} series")
    numbers = go_floats(v)
    known = ~np.isnan(v)
    if not known.all():
        mask = known.tolist()
        texts, numbers = list(compress(texts, mask)), list(compress(numbers, mask))
    if not numbers:
        return b""
    return (name + ("\n" + name).join(map(str.__add__, texts, numbers)) + "\n").encode()


def go_floats(values: np.ndarray) -> list[str]:
    """prometheus_client's floatToGoString for a whole array: Python's repr, except where they differ.

    floatToGoString returns repr(d) unless d is ±Inf or NaN, or d ≥ 1e6 (seven digits before the point,
    where Go switches to an exponent sooner than Python); only those few go through it one by one.
    """
    v = np.asarray(values, dtype=np.float64)
    out = list(map(float.__repr__, v.tolist()))
    for i in np.flatnonzero(~np.isfinite(v) | (v >= 1e6)).tolist():
        out[i] = floatToGoString(out[i])
    return out


class SeriesFamily(Metric):
    """One per-series gauge over all rules, from their published snapshots.

    `spliceable` gives the pre-rendered lines for /metrics. `samples` are only built when something reads
    them (generate_latest, get_sample_value, a scrape under another escaping), exactly as before.
    """

    def __init__(
        self, index: int, documentation: str, published: Sequence[tuple[RuleSnapshot, RenderedSeries]]
    ) -> None:
        name, attr, _ = SERIES_GAUGES[index]
        super().__init__(name, documentation, "gauge")
        self._index, self._attr, self._published = index, attr, published
        self._samples: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = []
            for snap, _ in self._published:
                values = getattr(snap, self._attr)
                if values is None:
                    continue
                for labels, value in zip(snap.labels, values.tolist(), strict=True):
                    if not math.isnan(value):  # unknown is left out, never published
                        self._samples.append(Sample(self.name, dict(labels), value))
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:  # Metric.__init__ assigns []
        self._samples = value

    def spliceable(self, escaping: str) -> list[tuple[bytes, bytes]] | None:
        """(text, deflated) per rule with samples; None if prometheus_client would write other names."""
        rendered = [r for _, r in self._published]
        if escaping not in SPLICEABLE_ESCAPINGS or not all(r.legacy_names for r in rendered):
            return None
        return [(r.text[self._index], r.deflated[self._index]) for r in rendered if r.text[self._index]]

    def _restricted_metric(self, names: Collection[str]) -> Metric | None:
        """For `/metrics?name[]=`: all samples are named after the family, so it is kept whole or dropped
        (without building the samples, as the base class would)."""
        if self.name in names and any(r.text[self._index] for _, r in self._published):
            return self
        return None
