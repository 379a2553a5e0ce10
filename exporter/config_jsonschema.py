"""JSON Schema (draft 2020-12) of rules.yaml, generated from the field tables in config_schema."""

from __future__ import annotations

from itertools import combinations
from types import MappingProxyType
from typing import Any

from exporter.config_schema import (
    CONFIG,
    DURATION_PATTERN,
    ENV_REFERENCE_PATTERN,
    LABEL_NAME_PATTERN,
    URL_PATTERN,
    Field,
    Section,
)

# Collections default to empty (built fresh each time, so nothing mutable is shared).
_EMPTY_DEFAULTS = MappingProxyType({"string_map": dict, "labels": dict, "names": list, "section_map": dict})


def _text(pattern: str | None = None) -> dict[str, Any]:
    """A string schema; a patterned string may also hold a ${VAR} reference, expanded at load."""
    if pattern is None:
        return {"type": "string"}
    return {"type": "string", "pattern": f"^(?:{pattern})$|{ENV_REFERENCE_PATTERN}"}


def _key_schema(f: Field) -> dict[str, Any]:
    if f.kind == "labels":
        return {"pattern": f"^{LABEL_NAME_PATTERN}$", "not": {"pattern": "^__"}}
    return {"pattern": f"^(?:{f.pattern})$"} if f.pattern else {}


def _value_schema(f: Field, defs: dict[str, Any]) -> dict[str, Any]:
    match f.kind:
        case "string":
            out = _text(f.pattern)
            return {**out, "minLength": 1} if f.non_empty else out
        case "enum":
            return {"type": "string", "enum": list(f.choices)}
        case "number" | "integer":
            out = {"type": f.kind}
            if f.minimum is not None:
                out["minimum"] = f.minimum
            if f.exclusive_minimum is not None:
                out["exclusiveMinimum"] = f.exclusive_minimum
            if f.maximum is not None:
                out["maximum"] = f.maximum
            return out
        case "boolean":
            return {"type": "boolean"}
        case "duration":
            return _text(DURATION_PATTERN)
        case "url" | "secret_url":
            return _text(URL_PATTERN)
        case "urls":
            return {"type": "array", "items": _text(URL_PATTERN), "minItems": 1}
        case "secret" | "secret_file" | "secret_url_file" | "path":
            return {"type": "string", "minLength": 1}
        case "string_map" | "labels":
            strings = {"type": "string"}
            return {"type": "object", "propertyNames": _key_schema(f), "additionalProperties": strings}
        case "names":
            return {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
        case "section" | "section_list" | "section_map":
            assert f.section is not None
            ref = {"$ref": f"#/$defs/{_define(f.section, defs)}"}
            if f.kind == "section":
                return ref
            if f.kind == "section_list":
                return {"type": "array", "items": ref, **({"minItems": 1} if f.non_empty else {})}
            return {"type": "object", "propertyNames": _key_schema(f), "additionalProperties": ref}
    raise AssertionError(f"unhandled kind {f.kind}")


def _required(names: tuple[str, ...]) -> dict[str, Any]:
    if len(names) == 1:
        return {"required": list(names)}
    return {"oneOf": [{"required": [n]} for n in names]}


def _section_schema(section: Section, defs: dict[str, Any]) -> dict[str, Any]:
    properties = {}
    for f in section.fields:
        prop = {"description": f.description, **_value_schema(f, defs)}
        default = f.default if f.default is not None else _EMPTY_DEFAULTS.get(f.kind)
        if default is not None:
            prop["default"] = default() if callable(default) else default
        properties[f.name] = prop
    out: dict[str, Any] = {
        "type": "object",
        "description": section.description,
        "properties": properties,
        "additionalProperties": False,
    }
    required = [f.name for f in section.fields if f.required]
    if required:
        out["required"] = required
    rules: list[dict[str, Any]] = []
    for group in section.at_most_one:
        rules.append({"not": {"anyOf": [{"required": list(pair)} for pair in combinations(group, 2)]}})
    rules.extend(_required(group) for group in section.exactly_one)
    for v in section.variants:
        then = _required(v.exactly_one)
        if v.forbidden:
            then["not"] = {"anyOf": [{"required": [n]} for n in v.forbidden]}
        rules.append({"if": {"properties": {"type": {"const": v.type}}, "required": ["type"]}, "then": then})
    if rules:
        out["allOf"] = rules
    if section.together:
        out["dependentRequired"] = {
            n: [m for m in group if m != n] for group in section.together for n in group
        }
    return out


def _define(section: Section, defs: dict[str, Any]) -> str:
    if section.name not in defs:
        defs[section.name] = {}  # reserve first: sections may be shared
        defs[section.name] = _section_schema(section, defs)
    return section.name


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of rules.yaml for editors and CI, from the tables the Checker uses."""
    defs: dict[str, Any] = {}
    top = _section_schema(CONFIG, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "prometheus-anomaly-exporter configuration",
        **top,
        "$defs": dict(sorted(defs.items())),
    }
