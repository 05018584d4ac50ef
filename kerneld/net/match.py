"""Deno-style network allowlist matching: pure functions, no sockets, no DNS.

Both `kerneld.permissions` (to validate `net`/`deny_net` entries, to check that a request only
narrows its profile, and to lower a kernel's rules once) and `kerneld.net.proxy` (to decide
each connection) use this module, so the rules are written once and unit-tested without any I/O.

Rule syntax (one string per rule)::

    example.com            that host, every port
    example.com:443        that host, port 443
    *.example.com[:443]    example.com itself and every name below it
    1.2.3.4[:443]          that IPv4 address
    [2001:db8::1]:443      an IPv6 address with a port (brackets needed for a port)
    2001:db8::1            an IPv6 address, every port
    10.0.0.0/8[:443]       an IPv4 network;  [fd00::/8]:443 an IPv6 one

Semantics (Deno's, plus what a proxy in front of untrusted code needs):

- deny beats allow; no port in a rule means every port;
- a hostname rule never authorises an IP literal, and an IP rule never authorises a hostname
  (the name asked for is what is checked, as in Deno);
- after a hostname is resolved, every address is checked again: deny IP/CIDR rules apply, and a
  *special* address (loopback, private, link-local, CGNAT, multicast, unspecified, reserved,
  cloud metadata...) is refused unless an IP rule, or a CIDR rule lying wholly inside special
  space, names it. So `localhost:8080` alone reaches nothing, and `0.0.0.0/0` does not unlock
  the host's loopback: name `127.0.0.1` or `10.0.0.0/8` explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RuleKind = Literal["host", "wildcard", "ip", "cidr"]
ALL: Literal["*"] = "*"
Rules = Sequence["NetRule"] | Literal["*"]

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")

# Address space that must never be reached by a hostname rule alone. Python's `is_global`
# covers most of it; these are listed explicitly so that a CIDR rule can be recognised as
# "wholly special" and because 3.11 misses CGNAT and the IPv4-compatible block.
SPECIAL_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/96", "::1/128", "::ffff:0:0/96", "100::/64", "2001:db8::/32",
        "fc00::/7", "fe80::/10", "ff00::/8",
    )
)
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RuleError(ValueError):
    """A net rule string that cannot be parsed; the message says why."""


@dataclass(frozen=True)
class NetRule:
    """One parsed allow/deny entry. `host` is the lower-cased name (without `*.` for a
    wildcard); `network` is set for ip/cidr rules (a /32 or /128 for an ip rule)."""

    kind: RuleKind
    host: str
    port: int | None
    network: IPNetwork | None = None

    def __str__(self) -> str:
        if self.kind in ("host", "wildcard"):
            base = ("*." if self.kind == "wildcard" else "") + self.host
        else:
            assert self.network is not None
            base = str(self.network.network_address) if self.kind == "ip" else str(self.network)
            if self.network.version == 6 and self.port is not None:
                base = f"[{base}]"
        return base if self.port is None else f"{base}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> NetRule:
        """Parse one rule (see the module docstring); raises RuleError."""
        if not isinstance(text, str) or not text.strip():
            raise RuleError("expected a non-empty string")
        text = text.strip()
        host, port = _split_host_port(text)
        if "/" in host:
            try:
                net = ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise RuleError(f"{host!r} is not a valid CIDR network") from None
            return cls("cidr", str(net), port, net)
        addr = parse_ip(host)
        if addr is not None:
            return cls("ip", str(addr), port, ipaddress.ip_network(addr))
        if host.startswith("*."):
            return cls("wildcard", normalise_hostname(host[2:]), port)
        return cls("host", normalise_hostname(host), port)

    def port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    def matches_name(self, name: str, port: int) -> bool:
        """A (normalised) hostname against a host/wildcard rule; ip/cidr rules never match."""
        if not self.port_ok(port):
            return False
        if self.kind == "host":
            return name == self.host
        if self.kind == "wildcard":
            return name == self.host or name.endswith("." + self.host)
        return False

    def matches_addr(self, addr: IPAddress, port: int) -> bool:
        """An address against an ip/cidr rule; hostname rules never match an address."""
        if self.network is None or not self.port_ok(port):
            return False
        return addr.version == self.network.version and addr in self.network

    def names_special(self) -> bool:
        """True for an ip/cidr rule lying wholly inside special space, i.e. one that may
        explicitly authorise a loopback/private/... address."""
        net = self.network
        if net is None:
            return False
        if self.kind == "ip":
            return True
        return any(
            net.version == s.version and net.subnet_of(s)  # type: ignore[arg-type]
            for s in SPECIAL_NETWORKS
        )


@dataclass(frozen=True)
class Decision:
    """The outcome of one check; `reason` is short, human-readable and logged verbatim."""

    allowed: bool
    reason: str


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RuleError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise RuleError(f"{text!r}: unexpected {rest!r} after ']'")
        return host, parse_port(rest[1:]) if rest else None
    if text.count(":") > 1:  # a bare IPv6 address or network: no port possible
        return text, None
    if ":" in text:
        host, _, port = text.partition(":")
        return host, parse_port(port)
    return text, None


def parse_port(text: str) -> int:
    """A decimal TCP port 1..65535; raises RuleError."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RuleError(f"port {text!r} is not a number in 1..65535")
    return int(text)


def parse_ip(text: str) -> IPAddress | None:
    """An IP literal (IPv4-mapped IPv6 folded to IPv4), or None if `text` is not one.
    Zone ids (`fe80::1%eth0`) are refused: they name an interface of the proxy's host."""
    if "%" in text:
        raise RuleError(f"{text!r}: IPv6 zone ids are not supported")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalise_hostname(name: str) -> str:
    """Lower-case, drop one trailing dot, and validate a DNS name. Names whose last label is
    numeric (`127.1`, `0x7f.1`, `2130706433`) are refused: resolvers treat them as IPv4
    literals, which would let a "hostname" smuggle an address past the rules."""
    name = name.lower()
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        raise RuleError(f"{name!r} is not a valid hostname")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise RuleError(f"{name!r} is not a valid hostname")
    if _NUMERIC_LABEL.match(labels[-1]):
        raise RuleError(f"{name!r} looks like a numeric address, not a hostname")
    return name


def parse_rules(entries: Iterable[str]) -> tuple[NetRule, ...]:
    """Parse a list of rule strings, in order; raises RuleError naming the bad entry."""
    rules = []
    for entry in entries:
        try:
            rules.append(NetRule.parse(entry))
        except RuleError as e:
            raise RuleError(f"{entry!r}: {e}") from None
    return tuple(rules)


def special_kind(addr: IPAddress) -> str | None:
    """Why `addr` must not be reached through a hostname rule, or None if it is public."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            inner = special_kind(embedded)
            return None if inner is None else f"{inner} (embedded in {addr})"
    checks = (
        (addr in METADATA_ADDRESSES, "metadata"),
        (addr.is_loopback, "loopback"),
        (addr.is_unspecified, "unspecified"),
        (addr.is_link_local, "link-local"),
        (addr.is_multicast, "multicast"),
        (addr.is_private, "private"),
        (any(addr in n for n in SPECIAL_NETWORKS if n.version == addr.version), "reserved"),
        (not addr.is_global, "non-global"),
    )
    return next((kind for hit, kind in checks if hit), None)


def _first(rules: Rules, pred: Callable[[NetRule], bool]) -> NetRule | None:
    if rules == ALL:
        return None
    return next((r for r in rules if pred(r)), None)


def check_address(rules: Rules, deny_rules: Sequence[NetRule], addr: IPAddress, port: int,
                  *, by_name: bool) -> Decision:
    """Decide one concrete address. `by_name` says the address came from resolving a name
    that a hostname rule allowed; otherwise the address was asked for literally."""
    folded = parse_ip(str(addr))  # IPv4-mapped IPv6 is checked as the IPv4 it reaches
    addr = addr if folded is None else folded
    hit = _first(deny_rules, lambda r: r.matches_addr(addr, port))
    if hit is not None:
        return Decision(False, f"{addr} denied by rule {hit}")
    rule = _first(rules, lambda r: r.matches_addr(addr, port))
    kind = special_kind(addr)
    if kind is not None:
        if rule is not None and rule.names_special():
            return Decision(True, f"{kind} address {addr} allowed by rule {rule}")
        return Decision(False, f"{kind} address {addr} port {port} is not named by an "
                               "IP/CIDR rule")
    if by_name:
        return Decision(True, f"{addr} resolved from an allowed name")
    if rules == ALL:
        return Decision(True, "all public destinations allowed")
    if rule is not None:
        return Decision(True, f"allowed by rule {rule}")
    return Decision(False, f"no IP/CIDR rule allows {addr}:{port} (hostname rules never do)")


def allowed(rules: Rules, deny_rules: Sequence[NetRule], host: str, port: int) -> Decision:
    """The check made on the destination as the client named it, before any DNS.

    An IP literal is decided completely here. A hostname that passes still has each resolved
    address checked with `check_address(..., by_name=True)`.
    """
    if not 1 <= port <= 65535:
        return Decision(False, f"port {port} out of range")
    try:
        addr = parse_ip(host.strip("[]"))
        name = None if addr is not None else normalise_hostname(host)
    except RuleError as e:
        return Decision(False, str(e))
    if addr is not None:
        return check_address(rules, deny_rules, addr, port, by_name=False)
    assert name is not None
    hit = _first(deny_rules, lambda r: r.matches_name(name, port))
    if hit is not None:
        return Decision(False, f"denied by rule {hit}")
    if rules == ALL:
        return Decision(True, "all hostnames allowed")
    rule = _first(rules, lambda r: r.matches_name(name, port))
    if rule is None:
        return Decision(False, f"no rule allows {name}:{port}")
    return Decision(True, f"allowed by rule {rule}")


def rule_covers(outer: NetRule, inner: NetRule) -> bool:
    """Whether every destination `inner` allows is also allowed by `outer` (used to check
    that a request narrows its profile's `net`)."""
    if outer.port is not None and outer.port != inner.port:
        return False
    if inner.kind in ("host", "wildcard"):
        if outer.kind == "wildcard":
            return inner.host == outer.host or inner.host.endswith("." + outer.host)
        return outer.kind == "host" == inner.kind and outer.host == inner.host
    if outer.network is None or inner.network is None:
        return False
    if outer.network.version != inner.network.version:
        return False
    return inner.network.subnet_of(outer.network)  # type: ignore[arg-type]
