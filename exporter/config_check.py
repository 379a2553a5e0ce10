"""Checks parsed rules.yaml against the field tables in config_schema, collecting every error at once."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from exporter.config_schema import LABEL_NAME_PATTERN, Field, Section
from exporter.durations import parse_duration
from exporter.secret import Secret


class Invalid:
    """Stands for a value that was present but wrong (already reported), so no later check trips on it."""


INVALID = Invalid()
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
_EXPONENT_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _shown(number: float) -> str:
    """A number as the user wrote it, shortened if huge (an integer of 400 digits)."""
    text = repr(number)
    return text if len(text) <= 40 else f"{text[:20]}… ({len(text)} digits)"


_PLAIN_KEY = re.compile(r"[^\s.\[\]'\"]+")


def _join(path: str, key: object) -> str:
    """`path.key`; a key that is empty or could be misread in a path (spaces, dots, brackets) is quoted."""
    shown = repr(key) if isinstance(key, str) and not _PLAIN_KEY.fullmatch(key) else str(key)
    return f"{path}.{shown}" if path else shown


def type_name(value: object) -> str:
    names: dict[type, str] = {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }
    return names.get(type(value), type(value).__name__)


_MOVED = {  # keys that moved, so an old file gets told where they live now
    "threshold": "z_threshold (the band width in σ; the alert's score threshold is alert.threshold)",
    "for": "alert.for",
    "keep_firing_for": "alert.keep_firing_for",
    "receivers": "alert.receivers",
}


def _unknown_key(key: object, known: list[str]) -> str:
    if key in _MOVED and "alert" in known:
        return f"unknown key (moved: use {_MOVED[str(key)]})"
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        hostname, _ = parts.hostname, parts.port  # a bad IPv6 literal or port raises ValueError
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(hostname) and not any(c.isspace() for c in text)


def spec_default(f: Field) -> Any:
    """The built-in value of a missing key, parsed from the spec exactly like a value written in the file."""
    if f.kind in ("string_map", "labels", "section_map"):
        return {}
    if f.kind == "names":
        return []
    if f.default is None:
        return None
    checker = Checker({}, None)
    value = checker.value(f, f.name, f.default)
    assert not checker.errors, checker.errors
    return value


class Checker:
    """Checks parsed YAML against the field tables, collecting every error; lives for one parse only."""

    def __init__(self, environ: Mapping[str, str], base_dir: str | None) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def section(self, section: Section, path: str, data: object) -> Any:
        if not isinstance(data, dict):
            self.error(path, f"must be a mapping (got {type_name(data)})")
            return INVALID
        out: dict[str, Any] = {}
        for key, value in data.items():
            f = section.get(key) if isinstance(key, str) else None
            if f is None:
                self.error(_join(path, key), _unknown_key(key, [g.name for g in section.fields]))
            else:
                out[key] = self.value(f, _join(path, key), value)
        for f in section.fields:
            if f.required and f.name not in data:
                self.error(_join(path, f.name), "required")
        for group in section.at_most_one:
            self._at_most_one(path, [n for n in group if n in data])
        for group in section.exactly_one:
            self._exactly_one(path, group, data)
        for a, b in section.together:
            if (a in data) != (b in data):
                missing, present = (b, a) if a in data else (a, b)
                self.error(_join(path, missing), f"required when {present} is set")
        variant = next((v for v in section.variants if out.get("type") == v.type), None)
        if variant is not None:
            for name in variant.forbidden:
                if name in data:
                    self.error(_join(path, name), f"not allowed for type {variant.type}")
            self._exactly_one(path, variant.exactly_one, data, f" for type {variant.type}")
        return out

    def _at_most_one(self, path: str, present: list[str]) -> None:
        if len(present) > 1:
            self.error(path, f"{' and '.join(present)} are mutually exclusive; set only one")

    def _exactly_one(self, path: str, group: tuple[str, ...], data: dict[Any, Any], suffix: str = "") -> None:
        present = [n for n in group if n in data]
        if len(group) == 1 and not present:
            self.error(_join(path, group[0]), f"required{suffix}")
        elif not present:
            self.error(path, f"one of {', '.join(group)} is required{suffix}")
        self._at_most_one(path, present)

    def text(self, path: str, value: object) -> str | None:
        """A string value with ${VAR} references expanded; None (after reporting) if that fails."""
        if not isinstance(value, str):
            self.error(path, f"must be a string (got {type_name(value)})")
            return None
        missing: list[str] = []
        malformed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal malformed
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name is None:
                malformed = True
            elif name in self.environ:
                return self.environ[name]
            else:
                missing.append(name)
            return ""

        expanded = _REFERENCE.sub(replace, value)
        for name in dict.fromkeys(missing):
            self.error(path, f"environment variable {name} is not set")
        if malformed:
            self.error(path, "`${` must be followed by a variable name and `}` (`$${` is a literal `${`)")
        return None if missing or malformed else expanded

    def value(self, f: Field, path: str, value: object) -> Any:
        """Check one value against its field; return the parsed value or INVALID."""
        match f.kind:
            case "section":
                assert f.section is not None
                return self.section(f.section, path, value)
            case "section_list" | "urls" | "names":
                return self._list(f, path, value)
            case "section_map" | "string_map" | "labels":
                return self._map(f, path, value)
            case "boolean":
                if isinstance(value, bool):
                    return value
                self.error(path, f"must be true or false (got {type_name(value)})")
                return INVALID
            case "number" | "integer":
                return self._number(f, path, value)
            case "enum" if not isinstance(value, str):
                self.error(path, f"must be one of {', '.join(f.choices)} (got {value!r})")
                return INVALID
            case "duration" if not isinstance(value, str):
                self.error(path, f"must be a duration such as 30s, 5m or 1h30m (got {type_name(value)})")
                return INVALID
        text = self.text(path, value)
        return INVALID if text is None else self._string(f, path, text)

    def _string(self, f: Field, path: str, text: str) -> Any:
        kind = f.kind
        if kind == "enum" and text not in f.choices:
            self.error(path, f"must be one of {', '.join(f.choices)} (got {text!r})")
        elif kind == "duration":
            try:
                return self._bounds(f, path, parse_duration(text), text)
            except ValueError as exc:
                self.error(path, str(exc))
        elif kind in ("url", "secret_url") and not _is_http_url(text):
            shown = "" if kind == "secret_url" else f" (got {text!r})"
            self.error(path, f"must be an http(s) URL{shown}")
        elif kind in ("secret_file", "secret_url_file", "path"):
            return self._file(f, path, text)
        elif kind in ("string", "secret") and (f.non_empty or kind == "secret") and not text.strip():
            self.error(path, "must not be empty")
        elif f.pattern and kind == "string" and not re.fullmatch(f.pattern, text):
            self.error(path, f"must match {f.pattern} (got {text!r})")
        else:
            if kind in ("secret", "secret_url"):
                return Secret(text)
            return text.rstrip("/") if kind == "url" else text
        return INVALID

    def _file(self, f: Field, path: str, name: str) -> Any:
        if not name:
            self.error(path, "must not be empty")
            return INVALID
        name = os.path.expanduser(name)
        if self.base_dir and not os.path.isabs(name):
            name = os.path.join(self.base_dir, name)
        if f.kind == "path":
            if os.path.isfile(name) and os.access(name, os.R_OK):
                return name
            self.error(path, f"file not found or not readable: {name!r}")
            return INVALID
        try:
            with open(name, encoding="utf-8") as fh:
                content = fh.read().strip()
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the name
            reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            if isinstance(exc, ValueError) and not isinstance(exc, UnicodeDecodeError):
                reason = str(exc)
            self.error(path, f"cannot read {name!r}: {reason}")
            return INVALID
        if not content:
            self.error(path, f"file {name!r} is empty")
        elif f.kind == "secret_url_file" and not _is_http_url(content):
            self.error(path, f"file {name!r} does not contain an http(s) URL")
        else:
            return Secret(content)
        return INVALID

    def _number(self, f: Field, path: str, value: object) -> Any:
        wanted = (int,) if f.kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            hint = ""
            if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
                # YAML 1.1 (PyYAML) reads 1e6 as text; 1.0e+6 (a dot and a signed exponent) is a number
                hint = f" {value!r}: write exponents with a dot and a sign, e.g. 1.0e+6, or plain digits"
            wanted_name = "an integer" if f.kind == "integer" else "a number"
            self.error(path, f"must be {wanted_name} (got {type_name(value)}{hint})")
            return INVALID
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"must be a finite number (got {value!r})")
            return INVALID
        shown = _shown(value)
        if f.kind == "number":
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float
                self.error(path, f"must be a finite number (got {shown})")
                return INVALID
        return self._bounds(f, path, value, shown)

    def _bounds(self, f: Field, path: str, number: float, shown: str) -> Any:
        if f.minimum is not None and number < f.minimum:
            self.error(path, f"must be at least {f.minimum:g} (got {shown})")
        elif f.exclusive_minimum is not None and number <= f.exclusive_minimum:
            self.error(path, f"must be greater than {f.exclusive_minimum:g} (got {shown})")
        elif f.maximum is not None and number > f.maximum:
            self.error(path, f"must be at most {f.maximum:g} (got {shown})")
        else:
            return number
        return INVALID

    def _list(self, f: Field, path: str, value: object) -> Any:
        if not isinstance(value, list):
            self.error(path, f"must be a list (got {type_name(value)})")
            return INVALID
        if not value and (f.non_empty or f.kind == "urls"):
            self.error(path, "must not be empty")
            return INVALID
        items: list[Any] = []
        for i, item in enumerate(value):
            sub = f"{path}[{i}]"
            if f.kind == "section_list":
                assert f.section is not None
                items.append(self.section(f.section, sub, item))
            elif f.kind == "urls":
                text = self.text(sub, item)
                items.append(INVALID if text is None else self._string(Field(f.name, "url", ""), sub, text))
            else:
                text = self.text(sub, item)
                if text is not None and text in items:
                    self.error(sub, f"{text!r} is listed twice")
                items.append(INVALID if text is None else text)
        return items

    def _map(self, f: Field, path: str, value: object) -> Any:
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping (got {type_name(value)})")
            return INVALID
        out: dict[str, Any] = {}
        pattern = LABEL_NAME_PATTERN if f.kind == "labels" else f.pattern
        for key, item in value.items():
            sub = _join(path, key)
            if not isinstance(key, str) or (pattern and not re.fullmatch(pattern, key)):
                self.error(sub, f"invalid name {key!r} (must match {pattern})")
            elif f.kind == "labels" and key.startswith("__"):
                self.error(sub, "label names starting with __ are reserved")
            elif f.kind == "labels" and key == "rule":
                self.error(sub, "the label `rule` is set by the exporter to the rule's name")
            elif f.kind == "section_map":
                assert f.section is not None
                out[key] = self.section(f.section, sub, item)
            else:
                text = self.text(sub, item)
                out[key] = INVALID if text is None else text
        return out
