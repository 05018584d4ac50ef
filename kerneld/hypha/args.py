"""The seed's calling conventions, read once: one dict of camelCase keys, or keyword arguments.

A Hypha caller may call `svc.executeCode({"kernelId": k, "code": c})` (the seed's and
JavaScript's style: one positional dict), `svc.executeCode(kernelId=k, code=c)` (keyword
arguments), or POST `{"kernelId": k, "code": c}` to Hypha's HTTP endpoint (which calls with
keyword arguments; a JSON array arrives as keys "0", "1", …). Every service function reads its
arguments through `Args`, so all three work alike, snake_case spellings (`kernel_id`, the
seed's own `inactivity_timeout`) are accepted next to camelCase, and a mistyped or unknown key
is refused with a message naming the function and the key (a typo must not silently do
nothing).

Kernel ids and tenancy: workspace `WS` owns the daemon namespace `hypha.WS`
(`daemon_namespace`), never `WS` itself. The attach process talks to the daemon as root, so
the daemon's per-owner filtering does not separate it from other local users of kerneld; a
Hypha user could otherwise create a workspace named like a local namespace ("jupyter", the
Jupyter adapter's, or any other) and list, run code in or destroy those kernels. The prefix
`hypha.` cannot come out of a Hypha workspace id (they hold no '.'), so no workspace maps onto
a namespace another adapter or local user makes by accident (a local root user can still
create kernels under `hypha.` on purpose: the prefix is reserved for this adapter, see
docs/hypha.md). Callers keep seeing the seed's ids, `"<WS>:<id>"` (`public_id`);
`scoped_kernel_id` turns what a caller passes (`"<WS>:<id>"`, or a bare id, as the seed's
`ensureKernelId` took) into the daemon's `"hypha.<WS>:<id>"`. An id naming any other
namespace is "not found", with the same words as a kernel that does not exist (never "access
denied", which would tell that it exists).
"""

from __future__ import annotations

import math
import re
from typing import Any

from kerneld.errors import InvalidArgument, KernelNotFound, shown

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # kerneld's id and namespace alphabet
PREFIX = "hypha."                                # the daemon namespaces of Hypha workspaces
_WS_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{128 - len(PREFIX)}}}")  # no '.', room for PREFIX
_INTERNAL_RE = re.compile(r"(?<![A-Za-z0-9._-])hypha\.(?=[A-Za-z0-9_-]+:)")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Args:
    """The arguments of one call of service function `fn`."""

    def __init__(self, fn: str, params: Any, kwargs: dict[str, Any],
                 allowed: tuple[str, ...]) -> None:
        self.fn = fn
        values: dict[str, Any] = {}
        positional = kwargs.pop("0", None) if isinstance(kwargs.get("0"), dict) else None
        for source in (params, positional):
            if source is None:
                continue
            if not isinstance(source, dict):
                raise InvalidArgument(f"{fn}: expected one object of named arguments "
                                      f"(such as {{\"kernelId\": ...}}), got {shown(source)}")
            values.update(source)
        values.update(kwargs)
        names = {camel(a): a for a in allowed} | {a: a for a in allowed}
        self._values: dict[str, Any] = {}
        for key, value in values.items():
            if key not in names:
                expected = ", ".join(sorted(camel(a) for a in allowed)) or "none"
                raise InvalidArgument(f"{fn}: unknown argument {shown(key)} (expected: "
                                      f"{expected})")
            self._values[names[key]] = value

    def has(self, name: str) -> bool:
        return self._values.get(name) is not None

    def raw(self, name: str) -> Any:
        return self._values.get(name)

    def string(self, name: str, *, required: bool = False, empty: bool = True,
               default: str | None = None) -> str | None:
        value = self._values.get(name)
        if value is None:
            if required:
                raise InvalidArgument(f"{self.fn}: {camel(name)} is required")
            return default
        if not isinstance(value, str) or (not empty and not value):
            raise InvalidArgument(f"{self.fn}: {camel(name)} must be a "
                                  f"{'' if empty else 'non-empty '}string, got {shown(value)}")
        return value

    def required(self, name: str) -> str:
        value = self.string(name, required=True, empty=False)
        assert value is not None
        return value

    def number(self, name: str, *, minimum: float = 0.0) -> float | None:
        value = self._values.get(name)
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < minimum):
            raise InvalidArgument(f"{self.fn}: {camel(name)} must be a number >= {minimum}, "
                                  f"got {shown(value)}")
        return float(value)

    def integer(self, name: str) -> int | None:
        value = self._values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{self.fn}: {camel(name)} must be an integer >= 0, got "
                                  f"{shown(value)}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._values.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidArgument(f"{self.fn}: {camel(name)} must be true or false, got "
                                  f"{shown(value)}")
        return value

    def mapping(self, name: str) -> dict[str, Any] | None:
        value = self._values.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidArgument(f"{self.fn}: {camel(name)} must be an object, got "
                                  f"{shown(value)}")
        return value


def namespace_of(context: Any) -> str:
    """The caller's workspace (`context["ws"]`, set by the server from the caller's
    connection; a caller cannot choose it). Quotas and results are kept per workspace; the
    daemon sees it as `daemon_namespace(ws)`."""
    ws = context.get("ws") if isinstance(context, dict) else None
    if not isinstance(ws, str) or not ws:
        raise InvalidArgument("this call carries no Hypha caller context (the service must be "
                              "registered with require_context)")
    if not _WS_RE.fullmatch(ws):
        raise InvalidArgument(f"workspace {shown(ws)} cannot be served by kerneld (its id must "
                              f"be 1-{128 - len(PREFIX)} characters of A-Z a-z 0-9 _ -)")
    return ws


def daemon_namespace(ws: str) -> str:
    """The daemon namespace of workspace `ws`'s kernels (see the module docstring)."""
    return PREFIX + ws


def public_id(kernel_id: str) -> str:
    """The id a caller sees for the daemon's kernel `kernel_id`: `<WS>:<id>`."""
    return kernel_id.removeprefix(PREFIX)


def public_text(text: str) -> str:
    """`text` (a daemon error message) with the daemon's ids shown as callers know them."""
    return _INTERNAL_RE.sub("", text)


def scoped_kernel_id(given: str, ws: str) -> str:
    """The daemon's id of kernel `given` of workspace `ws`, or KernelNotFound."""
    short = given.removeprefix(ws + ":")
    if not _ID_RE.fullmatch(short):
        raise KernelNotFound(f"kernel {shown(given)} not found")
    return f"{daemon_namespace(ws)}:{short}"
