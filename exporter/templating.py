"""Alert label and annotation templates: the safe subset of Prometheus' (Go text/template) language.

A template is compiled once, when the configuration is loaded, and rendered for every alert. It is text with
actions in ``{{ ... }}``; an action prints one value:

* variables: ``$labels`` (``$labels.job``, or ``index $labels "odd-name"`` for any label name),
  ``$value``, ``$score``, ``$expected``, ``$lower``, ``$upper``, ``$threshold``, ``$rule``; also ``.Labels``
  and ``.Value``, as in Prometheus;
* literals: ``"strings"`` with backslash escapes, back-quoted raw strings, numbers (``3``, ``-0.5``, ``1e3``);
* functions: humanize, humanize1024, humanizePercentage, humanizeDuration, printf (%d %f %e %g %s %v %% with
  flags ``-+ 0``, width and precision up to 99), toUpper, toLower, title, stripPort, stripDomain, index.
  They print as Prometheus' do (see exporter.gofmt). Arguments follow the name, ``( ... )`` groups, and
  ``x | f a`` calls ``f a x``: the piped value comes last;
* ``{{-`` and ``-}}`` (with a space on the inner side) trim the whitespace before / after the action;
  ``{{/* comments */}}`` print nothing.

Nothing can loop, branch, assign, query or reach Python objects: there is no if/range/with/define, no
eval, no attribute access (``$labels.x`` is a mapping lookup only). Every mistake is found by
compile_template, which raises TemplateError naming the bad part and its 0-based position. Rendering never
fails: a missing label or number prints as "", NaN and infinities as NaN, +Inf and -Inf, and output is cut
at MAX_OUTPUT characters.

>>> t = compile_template('{{ $labels.job }}: {{ $value | humanize }}, expected {{ printf "%.1f" $expected }}')
>>> t.render(TemplateContext(labels={"job": "api"}, value=1234567.0, expected=1200000.0))
'api: 1.235M, expected 1200000.0'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple, TypeAlias

from exporter.gofmt import (
    Directive,
    FormatError,
    Value,
    as_number,
    as_text,
    humanize,
    humanize1024,
    humanize_duration,
    humanize_percentage,
    parse_format,
    sprintf,
    strip_domain,
    strip_port,
    title,
)

MAX_OUTPUT = 4096
_MAX_NESTING = 16
_WS = " \t\r\n"

_Eval: TypeAlias = Callable[["TemplateContext"], Value]
_Part: TypeAlias = str | _Eval


class TemplateError(ValueError):
    """A template that cannot be compiled; `pos` is the 0-based offset of the bad part in the text."""

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(f"position {pos}: {message}")
        self.pos = pos


@dataclass(frozen=True)
class TemplateContext:
    """What a template can see of one alerting series; None means unknown and prints as ""."""

    labels: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None
    score: float | None = None
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    rule: str = ""
    threshold: float | None = None


# --- the functions ---------------------------------------------------------------------------------------


def _numeric(fn: Callable[[float], str]) -> Callable[[Value], str]:
    """A number formatter as a template function: text that is not a number is printed as it is."""

    def call(value: Value) -> str:
        number = as_number(value)
        return number if isinstance(number, str) else fn(float(number))

    return call


_FUNCTIONS: dict[str, Callable[[Value], str]] = {
    "humanize": _numeric(humanize),
    "humanize1024": _numeric(humanize1024),
    "humanizeDuration": _numeric(humanize_duration),
    "humanizePercentage": _numeric(humanize_percentage),
    "toUpper": lambda v: as_text(v).upper(),
    "toLower": lambda v: as_text(v).lower(),
    "title": lambda v: title(as_text(v)),
    "stripPort": lambda v: strip_port(as_text(v)),
    "stripDomain": lambda v: strip_domain(as_text(v)),
}
_ALL_FUNCTIONS = [*_FUNCTIONS, "printf", "index"]
_VARIABLES = {
    "$value": "value",
    "$score": "score",
    "$expected": "expected",
    "$lower": "lower",
    "$upper": "upper",
    "$threshold": "threshold",
    "$rule": "rule",
}
_KNOWN_VARIABLES = ["$labels", *_VARIABLES, ".Labels", ".Value"]
_CONTROL = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
_SUPPORTED = (
    f"templates may only print variables ({', '.join(_KNOWN_VARIABLES)}), "
    f"optionally through functions ({', '.join(_ALL_FUNCTIONS)}) and | pipelines"
)


def _printf(pieces: list[str | Directive], args: list[_Eval]) -> _Eval:
    return lambda ctx: sprintf(pieces, [arg(ctx) for arg in args])


# --- lexing and parsing -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"(?P<ws>[ \t\r\n]+)|(?P<close>}})"
    r"|(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.])"
    r'|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)'
    r"|(?P<var>\$(?:[A-Za-z_]\w*)?(?:\.[A-Za-z_]\w*)*)|(?P<field>(?:\.[A-Za-z_]\w*)+|\.)"
    r"|(?P<ident>[A-Za-z_]\w*)|(?P<punct>[|()]|:?=)",
    re.ASCII,
)
_COMMENT = re.compile(r"[ \t\r\n]*/\*")
_ESCAPES = {"\\": "\\", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(?:x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)


class _Token(NamedTuple):
    kind: str
    text: str
    pos: int


class _Arg(NamedTuple):
    """A compiled operand: its evaluator, whether it is the labels mapping, its text if a string literal."""

    run: _Eval
    is_labels: bool
    pos: int
    literal: str | None = None


def _unquote(token: _Token) -> str:
    if token.kind == "raw":
        return token.text[1:-1]

    def escape(match: re.Match[str]) -> str:
        simple = match.group(4)
        if simple is not None:
            if simple not in _ESCAPES:
                raise TemplateError(
                    token.pos + 1 + match.start(), f"unknown escape \\{simple} in string literal"
                )
            return _ESCAPES[simple]
        code = int(match.group(1) or match.group(2) or match.group(3), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise TemplateError(
                token.pos + 1 + match.start(), f"invalid code point {match.group()} in string literal"
            )
        return chr(code)

    return _ESCAPE.sub(escape, token.text[1:-1])


def _constant(value: Value) -> _Eval:
    return lambda ctx: value


def _number_literal(text: str) -> int | float:
    if any(c in text for c in ".eE"):
        return float(text)
    number = int(text)
    return number if -(2**63) <= number < 2**63 else float(text)  # Go: an integer constant must fit int64


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"


class _Parser:
    """Compiles one template text; lives for one compile_template call."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[_Token] = []
        self.i = 0

    def parts(self) -> list[_Part]:
        text, pos, trim = self.text, 0, False
        parts: list[_Part] = []
        while True:
            start = text.find("{{", pos)
            end = len(text) if start < 0 else start
            stray = text.find("}}", pos, end)
            if stray >= 0:
                raise TemplateError(
                    stray, "'}}' without an opening '{{' (write {{ \"}}\" }} for literal braces)"
                )
            chunk = text[pos:end].lstrip(_WS) if trim else text[pos:end]
            if start < 0:
                parts.append(chunk)
                return [p for p in parts if p != ""]
            i = start + 2
            if text.startswith("-", i) and len(text) > i + 1 and text[i + 1] in _WS:
                chunk, i = chunk.rstrip(_WS), i + 1
            parts.append(chunk)
            pos, trim, comment = self._lex(start, i)
            if not comment:
                parts.append(self._action(start))

    def _lex(self, start: int, i: int) -> tuple[int, bool, bool]:
        """Tokenize the action opened at `start` into self.tokens; return its end, trim, is-comment."""
        text, self.tokens = self.text, []
        comment = _COMMENT.match(text, i)
        if comment:
            close = text.find("*/", comment.end())
            if close < 0:
                raise TemplateError(comment.end() - 2, "unclosed comment: '/*' without '*/'")
            i = close + 2
        while True:
            if text.startswith("-}}", i) and text[i - 1] in _WS:
                return i + 3, True, bool(comment)
            if i >= len(text):
                raise TemplateError(start, "unclosed action: '{{' without a matching '}}'")
            if text.startswith("{{", i):
                raise TemplateError(start, "unclosed action: '{{' not closed before the next '{{'")
            match = _TOKEN.match(text, i)
            if match is None or (comment and match.lastgroup not in ("ws", "close")):
                raise TemplateError(i, self._unexpected(i, bool(comment)))
            if match.lastgroup == "close":
                return match.end(), False, bool(comment)
            if match.lastgroup != "ws":
                self.tokens.append(_Token(str(match.lastgroup), match.group(), i))
            i = match.end()

    def _unexpected(self, i: int, after_comment: bool) -> str:
        if after_comment:
            return "a comment must end its action: '*/}}'"
        if self.text[i] in '"`':
            return "unterminated string literal"
        return f"unexpected {self.text[i : i + 12]!r} in action"

    def _action(self, start: int) -> _Eval:
        if not self.tokens:
            raise TemplateError(start, "empty action '{{ }}'")
        for token in self.tokens:
            if token.kind == "ident" and token.text in _CONTROL:
                raise TemplateError(
                    token.pos, f"control structures ({token.text}) are not supported; {_SUPPORTED}"
                )
            if token.kind == "punct" and token.text in (":=", "="):
                raise TemplateError(
                    token.pos, f"variable assignment ({token.text}) is not supported; {_SUPPORTED}"
                )
        self.i = 0
        arg = self._pipeline(0)
        if self.i < len(self.tokens):
            token = self.tokens[self.i]
            raise TemplateError(token.pos, f"unexpected {token.text!r}")
        return arg.run

    def _peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _at_end_of_command(self) -> bool:
        token = self._peek()
        return token is None or (token.kind == "punct" and token.text in ("|", ")"))

    def _pipeline(self, depth: int) -> _Arg:
        arg = self._command(None, depth)
        while (token := self._peek()) is not None and token.kind == "punct" and token.text == "|":
            self.i += 1
            arg = self._command(arg, depth)
        return arg

    def _command(self, piped: _Arg | None, depth: int) -> _Arg:
        if self._at_end_of_command():
            token = self._peek()
            where = token.pos if token else self.tokens[-1].pos
            raise TemplateError(where, "missing value before or after | or inside ( )")
        head = self.tokens[self.i]
        if head.kind == "ident":
            self.i += 1
            args = []
            while not self._at_end_of_command():
                args.append(self._operand(depth))
            return self._call(head, args if piped is None else [*args, piped])
        arg = self._operand(depth)
        if not self._at_end_of_command():
            raise TemplateError(head.pos, f"{head.text} is not a function and takes no arguments")
        if piped is not None:
            raise TemplateError(head.pos, f"cannot pipe into {head.text}: only functions can follow |")
        return arg

    def _operand(self, depth: int) -> _Arg:
        token = self.tokens[self.i]
        self.i += 1
        if token.kind in ("str", "raw"):
            literal = _unquote(token)
            return _Arg(_constant(literal), False, token.pos, literal)
        if token.kind == "num":
            return _Arg(_constant(_number_literal(token.text)), False, token.pos)
        if token.kind in ("var", "field"):
            return self._variable(token)
        if token.kind == "ident":
            return self._call(token, [])
        if token.text == "(":
            if depth >= _MAX_NESTING:
                raise TemplateError(token.pos, f"parentheses nested deeper than {_MAX_NESTING}")
            arg = self._pipeline(depth + 1)
            closing = self._peek()
            if closing is None or closing.text != ")":
                raise TemplateError(token.pos, "unclosed '(' in action")
            self.i += 1
            return arg._replace(pos=token.pos, literal=None)
        raise TemplateError(token.pos, f"unexpected {token.text!r}")

    def _variable(self, token: _Token) -> _Arg:
        head, *fields = token.text.split(".") if token.kind == "var" else token.text[1:].split(".")
        name = {"Labels": "$labels", "Value": "$value"}.get(head, head) if token.kind == "field" else head
        field_pos = token.pos + len(head) + (token.kind == "field")  # the '.' after the head
        if name == "$labels":
            if not fields:
                return _Arg(attrgetter("labels"), True, token.pos)
            if len(fields) > 1:
                raise TemplateError(field_pos, f"{token.text}: a label value has no fields")
            label = fields[0]
            return _Arg(lambda ctx: ctx.labels.get(label, ""), False, token.pos)
        if name in _VARIABLES:
            if fields:
                raise TemplateError(field_pos, f"{token.text}: {name} has no fields")
            get = attrgetter(_VARIABLES[name])
            if name == "$rule":
                return _Arg(get, False, token.pos)
            return _Arg(lambda ctx: None if (v := get(ctx)) is None else float(v), False, token.pos)
        shown = token.text if token.kind == "var" else "." + head
        if shown in ("$", "."):
            raise TemplateError(token.pos, f"{shown} (the whole data) is not supported; {_SUPPORTED}")
        kind = "variable" if token.kind == "var" else "field"
        raise TemplateError(token.pos, f"unknown {kind} {shown} ({_did_you_mean(shown, _KNOWN_VARIABLES)})")

    def _call(self, token: _Token, args: list[_Arg]) -> _Arg:
        name = token.text
        if name not in _ALL_FUNCTIONS:
            raise TemplateError(token.pos, f"unknown function {name} ({_did_you_mean(name, _ALL_FUNCTIONS)})")
        if name == "printf":
            if not args or args[0].literal is None:
                raise TemplateError(token.pos, "printf needs a string literal format as its first argument")
            try:
                pieces = parse_format(args[0].literal)
            except FormatError as error:  # its index counts from the format's first character
                raise TemplateError(args[0].pos + 1 + error.index, str(error)) from None
            wanted = sum(isinstance(p, Directive) for p in pieces)
            if len(args) - 1 != wanted:
                raise TemplateError(
                    token.pos,
                    f"printf format {args[0].literal!r} takes {wanted} argument(s), got {len(args) - 1}",
                )
            return _Arg(_printf(pieces, self._scalars(name, args[1:])), False, token.pos)
        wanted = 2 if name == "index" else 1
        if len(args) != wanted:
            raise TemplateError(token.pos, f"{name} takes {wanted} argument(s), got {len(args)}")
        if name == "index":
            if not args[0].is_labels:
                raise TemplateError(args[0].pos, "index: the first argument must be $labels (or .Labels)")
            key = self._scalars(name, args[1:])[0]  # $labels is the only mapping there is
            return _Arg(lambda ctx: ctx.labels.get(as_text(key(ctx)), ""), False, token.pos)
        fn, arg = _FUNCTIONS[name], self._scalars(name, args)[0]
        return _Arg(lambda ctx: fn(arg(ctx)), False, token.pos)

    @staticmethod
    def _scalars(name: str, args: list[_Arg]) -> list[_Eval]:
        for arg in args:
            if arg.is_labels:
                raise TemplateError(
                    arg.pos, f'{name}: $labels is a mapping; use $labels.name or index $labels "name"'
                )
        return [arg.run for arg in args]


class Template:
    """A compiled template: text pieces and evaluators, rendered for one alert at a time."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str, parts: list[_Part]) -> None:
        self.text = text
        self._parts = tuple(parts)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def render(self, ctx: TemplateContext) -> str:
        """The text for one alert; never raises on data, at most MAX_OUTPUT characters (cut with "…").

        >>> compile_template("{{ $labels.instance | stripPort }}: {{ $score | printf \\"%.2f\\" }}").render(
        ...     TemplateContext(labels={"instance": "db1:9100"}, score=1.2345))
        'db1: 1.23'
        """
        out: list[str] = []
        size = 0
        for part in self._parts:
            piece = part if isinstance(part, str) else as_text(part(ctx))
            out.append(piece)
            size += len(piece)
            if size > MAX_OUTPUT:
                break
        text = "".join(out)
        return text if len(text) <= MAX_OUTPUT else text[: MAX_OUTPUT - 1] + "…"


def compile_template(text: str) -> Template:
    """Parse a template once; raise TemplateError naming the first bad part and its position.

    >>> compile_template("{{ $valeu }}")
    Traceback (most recent call last):
    ...
    exporter.templating.TemplateError: position 3: unknown variable $valeu (did you mean $value?)
    """
    return Template(text, _Parser(text).parts())
