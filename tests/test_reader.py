"""PrometheusReader against recorded Prometheus 2.42 responses (tests/data/prometheus) and synthetic ones."""

from __future__ import annotations

import base64
import gc
import itertools
import json
import logging
import math
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
import responses
from responses import matchers

from exporter import __version__
from exporter.config import BasicAuth, PrometheusConfig, TLSConfig
from exporter.reader import (
    MAX_POINTS_PER_SERIES,
    BadQueryError,
    PrometheusReader,
    QueryError,
    RangeResult,
    SeriesKey,
    UnavailableError,
)
from exporter.secret import Secret

DATA = Path(__file__).parent / "data" / "prometheus"
URL = "http://prometheus.test:9090"
ENDPOINT = f"{URL}/api/v1/query_range"
T0 = 1700000040  # a multiple of 60: start of the recorded fixtures
TOKEN = "tok-3f9a1c77e2b54d0e"


def recorded(name: str) -> str:
    return (DATA / f"{name}.json").read_text()


Points = Sequence[tuple[int, str]]


def matrix(series: Sequence[tuple[dict[str, str], Points]], **extra: Any) -> dict[str, Any]:
    """A success body shaped like Prometheus' query_range answer."""
    result = [{"metric": m, "values": [[t, v] for t, v in points]} for m, points in series]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}, **extra}


def key(**labels: str) -> SeriesKey:
    return tuple(sorted(labels.items()))


def sent_kwargs(call: Any) -> dict[str, Any]:
    """Keyword arguments (verify, cert, timeout...) the reader passed to requests, recorded by responses."""
    return dict(call.request.req_kwargs)


def params_of(request: Any) -> dict[str, str]:
    """Query parameters of a GET, or the form fields of a POST."""
    raw = request.body if request.method == "POST" else urlsplit(request.url).query
    if isinstance(raw, bytes):
        raw = raw.decode()
    return {k: v[0] for k, v in parse_qs(raw or "").items()}


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class UpperBound(random.Random):
    """An rng whose jitter always picks the largest allowed delay, to expose the backoff schedule."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make(
    sleeps: Sleeps | None = None,
    rng: random.Random | None = None,
    points_per_request: int = 2_000_000,
    **config: Any,
) -> PrometheusReader:
    cfg = PrometheusConfig(url=config.pop("url", URL), **config)
    return PrometheusReader(
        cfg,
        sleep=sleeps if sleeps is not None else Sleeps(),
        rng=rng or random.Random(0),
        points_per_request=points_per_request,
    )


def assert_vals(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_array_equal(actual, np.array(expected, dtype=np.float64))


# -- recorded responses ----------------------------------------------------------------------------------


def test_recorded_matrix_with_nan_inf_and_huge_values(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, body=recorded("matrix"))
    result = make().query_range("demo_requests", T0, T0 + 600, 60)

    assert result.keys == [
        key(__name__="demo_requests", instance=i, job="node") for i in ("a:9100", "b:9100", "c:9100")
    ]
    assert result.timestamps.dtype == np.int64
    assert list(result.timestamps) == [T0 + 60 * k for k in range(11)]
    assert result.values.dtype == np.float64 and result.values.shape == (3, 11)
    assert_vals(result.values[0], [10 + 0.5 * k for k in range(11)])
    nan = math.nan
    assert_vals(result.values[1], [nan] * 7 + [27, 28, 29, 30])
    assert_vals(result.values[2], [100, 101, 102, nan, math.inf, -math.inf, 1e300, 107, 108, 109, 110])
    assert result.dropped == 0 and result.warnings == ()
    assert params_of(rsps.calls[0].request) == {
        "query": "demo_requests",
        "start": str(T0),
        "end": str(T0 + 600),
        "step": "60",
    }


def test_recorded_chunks_merge_series_present_in_only_some(rsps: responses.RequestsMock) -> None:
    for name, start, end in (("matrix_chunk1", T0, T0 + 300), ("matrix_chunk2", T0 + 360, T0 + 600)):
        rsps.get(
            ENDPOINT,
            body=recorded(name),
            match=[
                matchers.query_param_matcher(
                    {"query": "demo_requests", "start": str(start), "end": str(end), "step": "60"}
                )
            ],
        )
    # 3 series x 6 steps per request: the recorded chunk boundaries.
    chunked = make(points_per_request=18).query_range("demo_requests", T0, T0 + 600, 60, series_hint=3)

    assert len(rsps.calls) == 2
    whole = json.loads(recorded("matrix"))["data"]["result"]
    # b first appears in chunk 2, so its row comes last
    assert chunked.keys == [key(**s["metric"]) for s in (whole[0], whole[2], whole[1])]
    assert_vals(chunked.values[2], [math.nan] * 7 + [27, 28, 29, 30])
    assert_vals(chunked.values[1, 6:], [1e300, 107, 108, 109, 110])


@pytest.mark.parametrize(
    ("fixture", "query", "expected_key"),
    [
        # A scalar expression comes back as a matrix with one label-less series.
        ("scalar", 'scalar(demo_requests{instance="a:9100"}) * 2', ()),
        ("no_name", 'demo_requests{instance="b:9100"} * 2', key(instance="b:9100", job="node")),
    ],
)
def test_recorded_label_sets(
    rsps: responses.RequestsMock, fixture: str, query: str, expected_key: SeriesKey
) -> None:
    rsps.get(ENDPOINT, body=recorded(fixture))
    result = make().query_range(query, T0, T0 + 600, 60)
    assert result.keys == [expected_key]


def test_recorded_empty_result(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, body=recorded("empty"))
    result = make().query_range("no_such_metric", T0, T0 + 600, 60)
    assert result.keys == [] and result.values.shape == (0, 11) and len(result.timestamps) == 11
    assert result.dropped == 0


@pytest.mark.parametrize(
    ("fixture", "status", "error_type", "message"),
    [
        ("bad_data_parse", 400, "bad_data", "1:18: parse error: unclosed left parenthesis"),
        (
            "bad_data_range_vector",
            400,
            "bad_data",
            'invalid expression type "range vector" for range query, must be Scalar or instant Vector',
        ),
        (
            "bad_data_resolution",
            400,
            "bad_data",
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        (
            "execution_too_many_samples",
            422,
            "execution",
            "query processing would load too many samples into memory in query execution",
        ),
    ],
)
def test_recorded_rejections_are_bad_queries_and_not_retried(
    rsps: responses.RequestsMock, sleeps: Sleeps, fixture: str, status: int, error_type: str, message: str
) -> None:
    rsps.get(ENDPOINT, body=recorded(fixture), status=status)
    with pytest.raises(BadQueryError) as info:
        make(sleeps).query_range("sum(demo_requests", T0, T0 + 600, 60)
    assert message in str(info.value)
    assert "sum(demo_requests" in str(info.value)
    assert (info.value.status, info.value.error_type) == (status, error_type)
    assert len(rsps.calls) == 1 and sleeps == []


def test_recorded_timeout_503_is_retried_then_unavailable(
    rsps: responses.RequestsMock, sleeps: Sleeps
) -> None:
    rsps.get(ENDPOINT, body=recorded("timeout"), status=503)
    with pytest.raises(UnavailableError) as info:
        make(sleeps, max_retries=2).query_range("demo_requests", T0, T0 + 600, 60)
    assert "HTTP 503 timeout: query timed out in expression evaluation" in str(info.value)
    assert info.value.status == 503
    assert len(rsps.calls) == 3 and len(sleeps) == 2


# -- grid and chunking -----------------------------------------------------------------------------------


def test_grid_floors_start_and_end_to_multiples_of_step(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, json=matrix([({"job": "x"}, [(T0 - 60, "1"), (T0 + 120, "4")])]))
    result = make().query_range("up", T0 - 1.5, T0 + 179.9, 60)
    assert list(result.timestamps) == [T0 - 60, T0, T0 + 60, T0 + 120]
    assert_vals(result.values[0], [1, math.nan, math.nan, 4])
    assert params_of(rsps.calls[0].request) == {
        "query": "up",
        "start": str(T0 - 60),
        "end": str(T0 + 120),
        "step": "60",
    }


@pytest.mark.parametrize(
    ("start", "end", "step"),
    [
        (T0, T0 + 60, 0.5),
        (T0, T0 + 60, 1.5),
        (T0, T0 + 60, 0),
        (T0, T0 + 60, math.nan),
        (T0 + 60, T0, 60),
        (math.inf, T0, 60),
    ],
)
def test_invalid_step_or_range_is_a_value_error(
    rsps: responses.RequestsMock, start: float, end: float, step: float
) -> None:
    with pytest.raises(ValueError):
        make().query_range("up", start, end, step)
    assert len(rsps.calls) == 0


def serve_generated(
    rsps: responses.RequestsMock, series: dict[str, Callable[[int], bool]]
) -> list[tuple[int, int]]:
    """Answer any chunk: series `name` is t/60 at each grid time t where `present(t)`. Returns the chunks."""
    chunks: list[tuple[int, int]] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        p = params_of(request)
        start, end, step = int(p["start"]), int(p["end"]), int(p["step"])
        chunks.append((start, end))
        out = []
        for name, present in series.items():
            points = [(t, str(t // 60)) for t in range(start, end + 1, step) if present(t)]
            if points:
                out.append(({"__name__": "m", "series": name}, points))
        return 200, {}, json.dumps(matrix(out))

    rsps.add_callback(responses.GET, ENDPOINT, callback=answer)
    return chunks


def assert_contiguous(chunks: list[tuple[int, int]], first: int, last: int, step: int, most: int) -> None:
    assert chunks[0][0] == first and chunks[-1][1] == last
    for (_, prev_end), (next_start, _) in itertools.pairwise(chunks):
        assert next_start == prev_end + step  # no overlap, no hole
    assert all((end - start) // step + 1 <= most for start, end in chunks)


def test_long_ranges_are_split_into_contiguous_chunks_of_at_most_10000_points(
    rsps: responses.RequestsMock,
) -> None:
    n_t = 25_001
    end = T0 + (n_t - 1) * 60
    cut1, cut2 = T0 + 9_000 * 60, T0 + 21_000 * 60
    chunks = serve_generated(
        rsps,
        {
            "always": lambda t: True,
            "early": lambda t: t < cut1,  # only in the first chunk
            "late": lambda t: t >= cut2,  # only in the last chunk
            "gap": lambda t: not cut1 <= t < cut2,  # absent from the middle chunk
            "never": lambda t: False,
        },
    )
    result = make().query_range("m", T0, end, 60)

    assert [(e - s) // 60 + 1 for s, e in chunks] == [MAX_POINTS_PER_SERIES, MAX_POINTS_PER_SERIES, 5_001]
    assert_contiguous(chunks, T0, end, 60, MAX_POINTS_PER_SERIES)
    assert [dict(k)["series"] for k in result.keys] == ["always", "early", "gap", "late"]
    t = result.timestamps
    masks = [t >= 0, t < cut1, (t < cut1) | (t >= cut2), t >= cut2]
    for row, present in zip(result.values, masks, strict=True):
        np.testing.assert_array_equal(row[present], t[present] // 60)
        assert np.isnan(row[~present]).all()


def test_chunks_respect_points_per_request_with_series_hint(rsps: responses.RequestsMock) -> None:
    chunks = serve_generated(rsps, {str(i): lambda t: True for i in range(10)})
    make(points_per_request=1_000).query_range("m", T0, T0 + 249 * 60, 60, series_hint=10)
    assert [(e - s) // 60 + 1 for s, e in chunks] == [100, 100, 50]
    assert_contiguous(chunks, T0, T0 + 249 * 60, 60, 100)


def test_chunks_shrink_once_more_series_are_seen_than_hinted(rsps: responses.RequestsMock) -> None:
    chunks = serve_generated(rsps, {str(i): lambda t: True for i in range(10)})
    result = make(points_per_request=1_000).query_range("m", T0, T0 + 1_299 * 60, 60)
    assert [(e - s) // 60 + 1 for s, e in chunks] == [1_000, 100, 100, 100]
    assert result.values.shape == (10, 1_300) and not np.isnan(result.values).any()


def test_at_least_one_step_per_request(rsps: responses.RequestsMock) -> None:
    chunks = serve_generated(rsps, {"a": lambda t: True})
    make(points_per_request=10).query_range("m", T0, T0 + 120, 60, series_hint=1_000)
    assert chunks == [(T0, T0), (T0 + 60, T0 + 60), (T0 + 120, T0 + 120)]


# -- parsing edge cases ----------------------------------------------------------------------------------


def test_keep_is_called_once_per_series_and_rejections_are_counted(rsps: responses.RequestsMock) -> None:
    serve_generated(rsps, {name: lambda t: True for name in "abcde"})
    asked: list[str] = []

    def keep(k: SeriesKey) -> bool:
        asked.append(dict(k)["series"])
        return dict(k)["series"] in {"b", "d"}

    result = make(points_per_request=10).query_range("m", T0, T0 + 9 * 60, 60, keep=keep, series_hint=5)
    assert len(rsps.calls) == 5  # 2 steps per request
    assert asked == list("abcde")
    assert [dict(k)["series"] for k in result.keys] == ["b", "d"]
    assert result.dropped == 3 and result.values.shape == (2, 10)


def test_keep_caps_a_50000_series_response_to_1000_rows(rsps: responses.RequestsMock) -> None:
    n = 50_000
    serve_generated(rsps, {f"s{i:05d}": lambda t: True for i in range(n)})
    kept: set[SeriesKey] = set()
    calls = 0

    def keep(k: SeriesKey) -> bool:
        nonlocal calls
        calls += 1
        if len(kept) < 1_000:
            kept.add(k)
        return k in kept

    # The hint keeps each request at 2 steps x 50,000 series instead of all 4 steps at once.
    result = make(points_per_request=100_000).query_range("m", T0, T0 + 180, 60, keep=keep, series_hint=n)
    assert len(rsps.calls) == 2 and calls == n
    assert result.values.shape == (1_000, 4) and result.values.nbytes == 1_000 * 4 * 8
    assert result.dropped == 49_000 and len(result.keys) == 1_000
    assert not np.isnan(result.values).any()


def pymalloc_arenas(capfd: pytest.CaptureFixture[str]) -> int:
    """Small-object arenas (1 MiB each) CPython holds now, from sys._debugmallocstats() on stderr."""
    capfd.readouterr()
    sys._debugmallocstats()
    found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", capfd.readouterr().err)
    if found is None:
        pytest.skip("no pymalloc statistics in this Python")
    return int(found.group(1).replace(",", ""))


def test_keys_of_a_large_result_do_not_keep_the_parsed_response_in_memory(
    rsps: responses.RequestsMock, capfd: pytest.CaptureFixture[str]
) -> None:
    """A history load's keys outlive its parsed JSON. Were they the strings json.loads made, each would pin
    the arena it sits in among the response's millions of point objects (soak: ~80 MB at 1,000 series)."""
    n, n_t = 400, 500  # 200,000 points: ~40 arenas of parsed JSON
    serve_generated(rsps, {f"s{i:05d}": lambda t: True for i in range(n)})
    reader = make()
    gc.collect()
    before = pymalloc_arenas(capfd)
    keys = reader.query_range("m", T0, T0 + (n_t - 1) * 60, 60).keys
    gc.collect()
    assert len(keys) == n and keys[7] == key(__name__="m", series="s00007")
    grown = pymalloc_arenas(capfd) - before
    assert grown < 10, grown  # 37 when the keys kept the parsed strings


def test_duplicate_series_in_one_response_last_point_wins(rsps: responses.RequestsMock) -> None:
    same = {"__name__": "up", "job": "a"}
    rsps.get(
        ENDPOINT,
        json=matrix(
            [
                (same, [(T0, "1"), (T0 + 60, "2")]),
                ({"job": "b"}, [(T0, "9")]),
                (same, [(T0 + 60, "3"), (T0 + 120, "4")]),
            ]
        ),
    )
    result = make().query_range("up", T0, T0 + 120, 60)
    assert result.keys == [key(__name__="up", job="a"), key(job="b")]
    assert_vals(result.values[0], [1, 3, 4])
    assert_vals(result.values[1], [9, math.nan, math.nan])


def test_points_off_the_grid_are_ignored(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    points = [(T0, "1"), (T0 + 30, "7"), (T0 + 60, "2"), (T0 + 600, "5")]
    rsps.get(ENDPOINT, json=matrix([({"job": "a"}, points)]))
    result = make().query_range("up", T0, T0 + 60, 60)
    assert_vals(result.values[0], [1, 2])
    assert "ignored 2 point(s) off the 60s step grid" in caplog.text


def test_duplicate_timestamps_in_one_series_last_point_wins(rsps: responses.RequestsMock) -> None:
    # numpy leaves the result of assigning one cell twice through fancy indexing unspecified: the reader
    # must pick the last point itself, as it does for a series repeated in one response
    points = [(T0, "1"), (T0, "5"), (T0 + 60, "2"), (T0 + 60, "7"), (T0 + 60, "8"), (T0 + 120, "3")]
    rsps.get(ENDPOINT, json=matrix([({"job": "a"}, points), ({"job": "b"}, [(T0, "9"), (T0, "4")])]))
    result = make().query_range("up", T0, T0 + 120, 60)
    assert_vals(result.values[0], [5, 8, 3])
    assert_vals(result.values[1], [4, math.nan, math.nan])


def test_points_out_of_order_land_on_their_own_times(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, json=matrix([({"job": "a"}, [(T0 + 120, "3"), (T0, "1"), (T0 + 60, "2")])]))
    assert_vals(make().query_range("up", T0, T0 + 120, 60).values[0], [1, 2, 3])


def test_points_a_millisecond_off_the_grid_are_ignored_and_float_grid_times_kept(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    points: list[tuple[Any, str]] = [(T0 + 0.001, "1"), (T0 + 60.0, "2"), (T0 + 119.999, "3"), (T0 - 60, "0")]
    points += [(T0 + 120, "4"), (T0 + 120, "5"), (1e30, "6"), (math.nan, "7")]
    rsps.get(ENDPOINT, json=matrix([({"job": "a"}, points)]))
    result = make().query_range("up", T0, T0 + 120, 60)
    assert_vals(result.values[0], [math.nan, 2, 5])
    assert "ignored 5 point(s) off the 60s step grid" in caplog.text


def test_a_value_that_is_not_a_number_is_an_unavailable_error_naming_the_query(
    rsps: responses.RequestsMock,
) -> None:
    rsps.get(ENDPOINT, json=matrix([({"job": "a"}, [(T0, "1"), (T0 + 60, "n/a")])]))
    with pytest.raises(UnavailableError, match=r"query 'up': unexpected response shape .*'n/a'"):
        make().query_range("up", T0, T0 + 60, 60)


def test_warnings_are_collected_across_chunks_without_duplicates(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, json=matrix([({"a": "1"}, [(T0, "1")])], warnings=["partial response: store down"]))
    rsps.get(
        ENDPOINT,
        json=matrix([({"a": "1"}, [(T0 + 60, "2")])], warnings=["partial response: store down", "other"]),
    )
    result = make(points_per_request=1).query_range("up", T0, T0 + 60, 60)
    assert result.warnings == ("partial response: store down", "other")
    assert_vals(result.values[0], [1, 2])


def test_warnings_are_logged_once_per_query(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """A partial answer (Thanos, Mimir) is still an answer, but the operator must hear of it."""
    rsps.get(ENDPOINT, json=matrix([({"a": "1"}, [(T0, "1")])], warnings=["partial response: store down"]))
    make().query_range("up", T0, T0, 60)
    (record,) = [r for r in caplog.records if "warnings" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        f"query 'up': {URL} answered with warnings (the data may be incomplete): partial response: store down"
    )


def test_native_histogram_only_series_are_skipped(rsps: responses.RequestsMock) -> None:
    body = matrix([({"job": "a"}, [(T0, "1")])])
    body["data"]["result"].append({"metric": {"job": "h"}, "histograms": [[T0, {"count": "3", "sum": "1"}]]})
    rsps.get(ENDPOINT, json=body)
    assert make().query_range("up", T0, T0, 60).keys == [key(job="a")]


def test_non_matrix_result_type_is_a_query_error(rsps: responses.RequestsMock, sleeps: Sleeps) -> None:
    rsps.get(ENDPOINT, json={"status": "success", "data": {"resultType": "vector", "result": []}})
    with pytest.raises(QueryError, match=r"resultType 'vector'.*instant-vector or scalar expression") as info:
        make(sleeps).query_range("up", T0, T0 + 60, 60)
    assert not isinstance(info.value, (BadQueryError, UnavailableError))
    assert len(rsps.calls) == 1


def test_unexpected_series_shape_is_unavailable(rsps: responses.RequestsMock) -> None:
    rsps.get(
        ENDPOINT,
        json={"status": "success", "data": {"resultType": "matrix", "result": [{"values": [[T0, "1"]]}]}},
    )
    with pytest.raises(UnavailableError, match="unexpected response shape"):
        make().query_range("up", T0, T0 + 60, 60)


# -- retries ---------------------------------------------------------------------------------------------


def test_503_then_200_is_retried_with_jittered_backoff(rsps: responses.RequestsMock, sleeps: Sleeps) -> None:
    rsps.get(ENDPOINT, body=recorded("timeout"), status=503)
    rsps.get(ENDPOINT, body=recorded("matrix"))
    result = make(sleeps, rng=random.Random(42)).query_range("demo_requests", T0, T0 + 600, 60)
    assert len(result.keys) == 3 and len(rsps.calls) == 2
    assert sleeps == [random.Random(42).uniform(0, 0.5)]


def test_backoff_doubles_from_half_a_second_and_is_capped_at_10s(
    rsps: responses.RequestsMock, sleeps: Sleeps
) -> None:
    rsps.get(ENDPOINT, body="<html>bad gateway</html>", status=502)
    with pytest.raises(UnavailableError, match="after 7 attempt"):
        make(sleeps, rng=UpperBound(), max_retries=6).query_range("up", T0, T0 + 60, 60)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


def test_connection_errors_exhaust_retries(rsps: responses.RequestsMock, sleeps: Sleeps) -> None:
    rsps.get(ENDPOINT, body=requests.ConnectionError("[Errno 111] Connection refused"))
    with pytest.raises(UnavailableError, match="Connection refused") as info:
        make(sleeps, max_retries=3).query_range("up", T0, T0 + 60, 60)
    assert len(rsps.calls) == 4 and len(sleeps) == 3
    assert all(0 <= s <= 0.5 * 2**i for i, s in enumerate(sleeps))
    assert "up" in str(info.value) and URL in str(info.value)


def test_timeouts_are_retried_and_timeout_is_passed(rsps: responses.RequestsMock, sleeps: Sleeps) -> None:
    rsps.get(ENDPOINT, body=requests.ReadTimeout("read timed out"))
    rsps.get(ENDPOINT, json=matrix([]))
    make(sleeps, timeout=12.5).query_range("up", T0, T0 + 60, 60)
    assert len(rsps.calls) == 2 and len(sleeps) == 1
    assert sent_kwargs(rsps.calls[1])["timeout"] == 12.5


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "7", 7.0),
        (429, "120", 30.0),
        (503, "2.5", 2.5),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", None),  # HTTP-date: ignored, the jittered backoff applies
    ],
)
def test_retry_after_is_honoured_and_capped(
    rsps: responses.RequestsMock, sleeps: Sleeps, status: int, retry_after: str, expected: float | None
) -> None:
    rsps.get(
        ENDPOINT,
        json={"status": "error", "errorType": "too_many_requests", "error": "slow down"},
        status=status,
        headers={"Retry-After": retry_after},
    )
    rsps.get(ENDPOINT, json=matrix([]))
    make(sleeps, rng=UpperBound()).query_range("up", T0, T0 + 60, 60)
    assert sleeps == [expected if expected is not None else 0.5]


def test_malformed_json_is_unavailable_after_retries(rsps: responses.RequestsMock, sleeps: Sleeps) -> None:
    rsps.get(ENDPOINT, body='{"status":"success","data":{"resultType":"matrix","res', status=200)
    with pytest.raises(UnavailableError, match="not a JSON object"):
        make(sleeps, max_retries=2).query_range("up", T0, T0 + 60, 60)
    assert len(rsps.calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("status", [401, 403, 404])
def test_other_client_errors_are_not_retried(
    rsps: responses.RequestsMock, sleeps: Sleeps, status: int
) -> None:
    rsps.get(ENDPOINT, body="404 page not found\n", status=status)
    with pytest.raises(UnavailableError, match=f"answered HTTP {status}") as info:
        make(sleeps).query_range("up", T0, T0 + 60, 60)
    assert info.value.status == status and len(rsps.calls) == 1 and sleeps == []


# -- HTTP details and secrets ----------------------------------------------------------------------------


def test_tenant_header_bearer_token_and_user_agent_are_sent(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, json=matrix([]))
    make(headers={"X-Scope-OrgID": "team-a"}, bearer_token=Secret(TOKEN + "\n")).query_range("up", T0, T0, 60)
    headers = rsps.calls[0].request.headers
    assert headers["X-Scope-OrgID"] == "team-a"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["User-Agent"] == f"prometheus-anomaly-exporter/{__version__}"


def test_basic_auth_is_sent(rsps: responses.RequestsMock) -> None:
    rsps.get(ENDPOINT, json=matrix([]))
    make(basic_auth=BasicAuth("alice", Secret("pa55word"))).query_range("up", T0, T0, 60)
    expected = "Basic " + base64.b64encode(b"alice:pa55word").decode()
    assert rsps.calls[0].request.headers["Authorization"] == expected


def test_bearer_token_and_basic_auth_together_are_rejected() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        make(bearer_token=Secret(TOKEN), basic_auth=BasicAuth("alice", Secret("pw")))


def test_secrets_never_appear_in_errors_or_logs(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A misbehaving proxy that echoes the request headers back, and a library error that quotes them.
    rsps.get(ENDPOINT, body=f"upstream failed; request had Authorization: Bearer {TOKEN}", status=502)
    rsps.get(ENDPOINT, body=requests.ConnectionError(f"reset (headers: Bearer {TOKEN})"))
    with pytest.raises(UnavailableError) as info:
        make(bearer_token=Secret(TOKEN), max_retries=1).query_range("up", T0, T0 + 60, 60)
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(info.value) and "<secret>" in str(info.value)
    assert TOKEN not in caplog.text and "<secret>" in caplog.text


def test_userinfo_in_url_is_redacted(rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture) -> None:
    url = "http://bob:hunter22@prometheus.test:9090"
    rsps.get(ENDPOINT, body=requests.ConnectionError("connection refused"))
    with pytest.raises(UnavailableError) as info:
        make(url=url, max_retries=1).query_range("up", T0, T0 + 60, 60)
    assert "hunter22" not in str(info.value) and "hunter22" not in caplog.text
    assert "http://<redacted>@prometheus.test:9090" in str(info.value)


def test_long_queries_are_posted_form_encoded(rsps: responses.RequestsMock) -> None:
    pods = "|".join(f"pod-{i:04d}-7c9d8f6b5-x2x4z" for i in range(100))
    query = f'sum by (pod) (rate(container_cpu_usage_seconds_total{{pod=~"{pods}"}}[5m]))'
    assert len(query) > 2_000
    rsps.post(ENDPOINT, body=recorded("post_matrix"))
    rsps.get(ENDPOINT, body=recorded("post_matrix"))
    make().query_range(query, T0, T0 + 120, 60)
    make().query_range("up", T0, T0 + 120, 60)

    post, get = rsps.calls[0].request, rsps.calls[1].request
    assert post.method == "POST" and urlsplit(post.url).query == ""
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert params_of(post) == {"query": query, "start": str(T0), "end": str(T0 + 120), "step": "60"}
    assert get.method == "GET" and params_of(get)["query"] == "up"


def test_long_query_is_shortened_in_messages(rsps: responses.RequestsMock) -> None:
    query = "sum(" + "x + " * 1_000 + "x"
    rsps.post(ENDPOINT, body=recorded("bad_data_parse"), status=400)
    with pytest.raises(BadQueryError) as info:
        make().query_range(query, T0, T0 + 60, 60)
    assert len(info.value.query) <= 200 and len(str(info.value)) < 400


def test_tls_settings_are_passed_and_insecure_is_warned_once(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would substitute these for verify=True
        monkeypatch.delenv(var, raising=False)
    rsps.get(ENDPOINT, json=matrix([]))
    make(tls=TLSConfig(ca_file="/etc/ca.pem", cert_file="/etc/c.pem", key_file="/etc/k.pem")).query_range(
        "up", T0, T0, 60
    )
    assert sent_kwargs(rsps.calls[0])["verify"] == "/etc/ca.pem"
    assert sent_kwargs(rsps.calls[0])["cert"] == ("/etc/c.pem", "/etc/k.pem")
    make().query_range("up", T0, T0, 60)
    assert sent_kwargs(rsps.calls[1])["verify"] is True
    assert not caplog.records

    insecure = make(tls=TLSConfig(insecure_skip_verify=True))
    insecure.query_range("up", T0, T0, 60)
    insecure.query_range("up", T0, T0, 60)
    assert sent_kwargs(rsps.calls[2])["verify"] is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "verification is disabled" in caplog.text


def test_close_only_closes_an_owned_session(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[requests.Session] = []
    monkeypatch.setattr(requests.Session, "close", lambda self: closed.append(self))
    PrometheusReader(PrometheusConfig(url=URL), session=requests.Session()).close()
    assert closed == []
    with PrometheusReader(PrometheusConfig(url=URL)):
        pass
    assert len(closed) == 1


def test_range_result_is_frozen() -> None:
    result = RangeResult([], np.zeros(0, dtype=np.int64), np.zeros((0, 0)), 0, ())
    with pytest.raises(AttributeError):
        result.dropped = 1  # type: ignore[misc]
