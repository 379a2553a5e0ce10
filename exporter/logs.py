"""Log output in Prometheus' styles: logfmt (default) or JSON, one line per record."""

from __future__ import annotations

import json
import logging
import sys
import time

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False)


def _fields(record: logging.LogRecord) -> dict[str, str]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
    level = {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())
    fields = {"ts": ts, "level": level, "caller": record.name, "msg": record.getMessage()}
    if record.exc_info:
        fields["err"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: str) -> str:
    if value and all(c.isalnum() or c in "-_.:/@+" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger (called from main(), never at import time)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, _LEVELS[level]))
