"""The one parser core of kerneld's TOML files: the daemon's config and permission profiles.

Both are tables of keys, each key declared once with its parser `(where, value) -> value`,
where `where` is what an error must cite (`file:table.key`, `env:NAME`, `request:env.X`).
This module holds what the two have in common, so a value means the same thing and is refused
with the same words in both: reading TOML, walking a key table (an unknown key is an error
that names it, the file, and the keys that exist), and the scalar coercions (string, boolean,
number, integer, choice, list). What only one of them knows stays with it: addresses, modes
and CURVE keys in `kerneld.config`; grants, net rules, sizes and paths in
`kerneld.permissions.values`.

Each user binds the core to its own error class (`ConfigError`, `ProfileError`), so callers
keep catching what they caught before:

    keys = TomlKeys(ProfileError)
    keys.walk("p.toml:limits.", table, parsers)   # {key: parsed}, unknown keys refused
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kerneld.errors import InvalidArgument

Parser = Callable[[str, Any], Any]


class TomlKeys:
    """The core parsers, raising `error(f"{where}: {message}")`."""

    def __init__(self, error: type[InvalidArgument]) -> None:
        self.error = error

    def fail(self, where: str, message: str) -> InvalidArgument:
        return self.error(f"{where}: {message}")

    # ------------------------------------------------------------------ documents and tables

    def loads(self, label: str, text: str) -> dict[str, Any]:
        """A TOML document; `label` names it in the error."""
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise self.error(f"{label}: invalid TOML: {e}") from None

    def table(self, where: str, value: object) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a table, got {value!r}")
        return value

    def unknown(self, where: str, known: Iterable[str], what: str = "key") -> InvalidArgument:
        """The error for a key (or table) that is not declared; lists the declared ones."""
        return self.fail(where, f"unknown {what}; expected one of {', '.join(known)}")

    def walk(self, prefix: str, table: Mapping[str, Any],
             parsers: Mapping[str, Parser]) -> dict[str, Any]:
        """Every key of `table` parsed by its parser (cited as `prefix + key`); a key without
        one is refused by `unknown`."""
        out: dict[str, Any] = {}
        for key, value in table.items():
            parser = parsers.get(key)
            if parser is None:
                raise self.unknown(prefix + key, parsers)
            out[key] = parser(prefix + key, value)
        return out

    # ------------------------------------------------------------------ scalars

    def string(self, where: str, value: object, *, empty: bool = True) -> str:
        if not isinstance(value, str) or (not empty and not value):
            raise self.fail(where, f"expected a {'' if empty else 'non-empty '}string, "
                                   f"got {value!r}")
        return value

    def boolean(self, where: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def number(self, where: str, value: object, *, minimum: float = 0.0) -> float:
        """A finite int or float (not a bool) of at least `minimum`."""
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise self.fail(where, f"expected a number, got {value!r}")
        if value < minimum:
            raise self.fail(where, f"expected a number >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, where: str, value: object, *, minimum: int | None = None) -> int:
        """An int (not a bool); with `minimum`, at least that (and the message says so)."""
        if (isinstance(value, bool) or not isinstance(value, int)
                or (minimum is not None and value < minimum)):
            bound = "" if minimum is None else f" >= {minimum}"
            raise self.fail(where, f"expected an integer{bound}, got {value!r}")
        return value

    def choice(self, *options: str) -> Parser:
        def parse(where: str, value: object) -> str:
            if value not in options:
                raise self.fail(where, f"expected one of {', '.join(map(repr, options))}, "
                                       f"got {value!r}")
            return str(value)
        return parse

    def list_of(self, item: Parser) -> Parser:
        """A list, each entry parsed by `item` (cited as `where[i]`), as a tuple."""
        def parse(where: str, value: object) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise self.fail(where, f"expected a list, got {value!r}")
            return tuple(item(f"{where}[{i}]", x) for i, x in enumerate(value))
        return parse
