"""Pure tests of the net allowlist matcher (kerneld.net.match): parsing, Deno semantics,
special-address policy, and rule coverage used for narrowing."""

from __future__ import annotations

import ipaddress

import pytest

from kerneld.net.match import (
    ALL,
    NetRule,
    RuleError,
    allowed,
    check_address,
    parse_rules,
    rule_covers,
    special_kind,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,kind,host,port,canonical", [
    ("example.com", "host", "example.com", None, "example.com"),
    ("Example.COM.:443", "host", "example.com", 443, "example.com:443"),
    ("*.github.com", "wildcard", "github.com", None, "*.github.com"),
    ("*.github.com:443", "wildcard", "github.com", 443, "*.github.com:443"),
    ("1.2.3.4", "ip", "1.2.3.4", None, "1.2.3.4"),
    ("1.2.3.4:80", "ip", "1.2.3.4", 80, "1.2.3.4:80"),
    ("2001:db8::1", "ip", "2001:db8::1", None, "2001:db8::1"),
    ("[2001:db8::1]", "ip", "2001:db8::1", None, "2001:db8::1"),
    ("[2001:db8::1]:443", "ip", "2001:db8::1", 443, "[2001:db8::1]:443"),
    ("10.0.0.0/8", "cidr", "10.0.0.0/8", None, "10.0.0.0/8"),
    ("10.1.2.3/8:22", "cidr", "10.0.0.0/8", 22, "10.0.0.0/8:22"),
    ("fd00::/8", "cidr", "fd00::/8", None, "fd00::/8"),
    ("[fd00::/8]:443", "cidr", "fd00::/8", 443, "[fd00::/8]:443"),
    ("::ffff:127.0.0.1", "ip", "127.0.0.1", None, "127.0.0.1"),
    ("under_score.example", "host", "under_score.example", None, "under_score.example"),
])
def test_parse(text: str, kind: str, host: str, port: int | None, canonical: str) -> None:
    rule = NetRule.parse(text)
    assert (rule.kind, rule.host, rule.port) == (kind, host, port)
    assert str(rule) == canonical
    assert NetRule.parse(str(rule)) == rule  # canonical form round-trips


@pytest.mark.parametrize("text", [
    "", "  ", "*", "*.", "a..b", "-a.com", "a-.com", "host:0", "host:65536", "host:http",
    "host:", "[::1", "[::1]x", "10.0.0.0/33", "300.1.2.3/8", "127.1", "0x7f.1", "2130706433",
    "fe80::1%eth0", "a" * 64 + ".com", "spa ce.com", "ex*mple.com",
])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(RuleError):
        NetRule.parse(text)


def test_parse_rules_names_the_bad_entry() -> None:
    with pytest.raises(RuleError, match="'bad host'"):
        parse_rules(["ok.com", "bad host"])


# --- hostname matching (Deno semantics) -------------------------------------------------------

RULES = parse_rules(["example.com:443", "*.github.com", "api.test", "1.2.3.4:80",
                     "198.51.100.0/24:22", "[2001:db8::1]:443"])


@pytest.mark.parametrize("host,port,ok", [
    ("example.com", 443, True),
    ("EXAMPLE.com.", 443, True),         # case and trailing dot do not matter
    ("example.com", 80, False),          # port given in the rule: only that port
    ("www.example.com", 443, False),     # a plain host rule does not cover subdomains
    ("github.com", 22, True),            # *.x includes x; no port = every port
    ("api.github.com", 443, True),
    ("a.b.github.com", 1, True),
    ("notgithub.com", 443, False),
    ("api.test", 65535, True),
    ("other.test", 80, False),
])
def test_hostnames(host: str, port: int, ok: bool) -> None:
    assert allowed(RULES, (), host, port).allowed is ok


def test_ip_rules_match_only_literals() -> None:
    assert allowed(RULES, (), "1.2.3.4", 80).allowed
    assert not allowed(RULES, (), "1.2.3.4", 81).allowed
    assert allowed(RULES, (), "2001:db8::1", 443).allowed  # special, but named explicitly
    assert not allowed(RULES, (), "2001:db8::2", 443).allowed
    assert allowed(parse_rules(["[2606:4700::1111]:443"]), (), "[2606:4700::1111]", 443).allowed


def test_hostname_rule_never_authorises_its_ip() -> None:
    rules = parse_rules(["one.one.one.one"])
    d = allowed(rules, (), "1.1.1.1", 443)
    assert not d.allowed and "hostname rules never do" in d.reason


def test_ip_rule_never_authorises_a_hostname() -> None:
    assert not allowed(parse_rules(["1.1.1.1"]), (), "one.one.one.one", 443).allowed


def test_cidr_rule_with_port() -> None:
    assert allowed(RULES, (), "198.51.100.7", 22).allowed  # special space, named by CIDR
    assert not allowed(RULES, (), "198.51.100.7", 23).allowed
    rules = parse_rules(["8.8.0.0/16:53"])
    assert allowed(rules, (), "8.8.8.8", 53).allowed
    assert not allowed(rules, (), "8.8.8.8", 54).allowed
    assert not allowed(rules, (), "8.9.8.8", 53).allowed


def test_deny_beats_allow() -> None:
    deny = parse_rules(["gist.github.com", "8.8.8.8"])
    assert not allowed(RULES, deny, "gist.github.com", 443).allowed
    assert allowed(RULES, deny, "api.github.com", 443).allowed
    assert not allowed(parse_rules(["8.8.0.0/16"]), deny, "8.8.8.8", 53).allowed
    wildcard_deny = parse_rules(["*.github.com:22"])
    assert not allowed(RULES, wildcard_deny, "github.com", 22).allowed
    assert allowed(RULES, wildcard_deny, "github.com", 443).allowed


def test_empty_rules_allow_nothing() -> None:
    for host in ("example.com", "1.1.1.1", "127.0.0.1", "localhost"):
        assert not allowed((), (), host, 443).allowed


def test_all_rules_allow_public_but_not_special() -> None:
    assert allowed(ALL, (), "example.com", 1).allowed
    assert allowed(ALL, (), "1.1.1.1", 443).allowed
    assert not allowed(ALL, (), "127.0.0.1", 80).allowed
    assert not allowed(ALL, (), "169.254.169.254", 80).allowed
    assert not allowed(ALL, parse_rules(["example.com"]), "example.com", 443).allowed


@pytest.mark.parametrize("host", ["127.1", "0x7f000001", "2130706433", "bad host", "",
                                  "fe80::1%lo"])
def test_numeric_or_malformed_hosts_refused(host: str) -> None:
    assert not allowed(parse_rules(["*.com"]), (), host, 80).allowed


def test_port_out_of_range() -> None:
    assert not allowed(ALL, (), "example.com", 0).allowed
    assert not allowed(ALL, (), "example.com", 70000).allowed


# --- special addresses and resolution policy --------------------------------------------------

@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"),
    ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("100.64.0.1", "reserved"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("240.0.0.1", "private"),
])
def test_special_kinds(address: str, kind: str) -> None:
    assert special_kind(ip(address)) == kind


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "2606:4700::1111",
                                     "64:ff9b::808:808"])
def test_public_addresses(address: str) -> None:
    assert special_kind(ip(address)) is None


@pytest.mark.parametrize("address", ["::ffff:127.0.0.1", "::ffff:10.0.0.1",
                                     "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::7f00:1"])
def test_embedded_ipv4_is_unwrapped(address: str) -> None:
    assert special_kind(ip(address)) is not None


def test_resolved_special_address_refused_unless_named() -> None:
    rules = parse_rules(["internal.corp"])
    d = check_address(rules, (), ip("10.1.2.3"), 443, by_name=True)
    assert not d.allowed and "private" in d.reason
    named = parse_rules(["internal.corp", "10.0.0.0/8"])
    assert check_address(named, (), ip("10.1.2.3"), 443, by_name=True).allowed
    assert check_address(rules, (), ip("93.184.216.34"), 443, by_name=True).allowed


def test_metadata_never_reached_by_name() -> None:
    rules = parse_rules(["*.amazonaws.com"])
    for addr in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert not check_address(rules, (), ip(addr), 80, by_name=True).allowed


def test_wide_cidr_does_not_name_special_space() -> None:
    wide = parse_rules(["0.0.0.0/0", "::/0"])
    assert allowed(wide, (), "1.1.1.1", 443).allowed
    for addr in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fd00::1"):
        assert not allowed(wide, (), addr, 443).allowed, addr
    assert allowed(parse_rules(["10.0.0.0/8"]), (), "10.9.9.9", 1).allowed
    assert allowed(parse_rules(["127.0.0.1:8080"]), (), "127.0.0.1", 8080).allowed


def test_deny_ip_applies_to_resolved_addresses() -> None:
    rules = parse_rules(["example.com"])
    deny = parse_rules(["93.184.216.0/24"])
    assert not check_address(rules, deny, ip("93.184.216.34"), 443, by_name=True).allowed


def test_ipv4_mapped_literal_is_checked_as_ipv4() -> None:
    rules = parse_rules(["127.0.0.1:80"])
    assert allowed(rules, (), "::ffff:127.0.0.1", 80).allowed
    assert not allowed(parse_rules(["8.8.8.8"]), parse_rules(["8.8.8.8"]),
                       "::ffff:8.8.8.8", 53).allowed


# --- coverage (narrowing) ---------------------------------------------------------------------

@pytest.mark.parametrize("outer,inner,ok", [
    ("example.com", "example.com:443", True),
    ("example.com:443", "example.com:443", True),
    ("example.com:443", "example.com", False),     # every port is more than one port
    ("example.com:443", "example.com:80", False),
    ("*.github.com", "api.github.com:443", True),
    ("*.github.com", "github.com", True),
    ("*.github.com", "*.api.github.com", True),
    ("api.github.com", "*.api.github.com", False),  # a host never covers a wildcard
    ("*.api.github.com", "*.github.com", False),
    ("10.0.0.0/8", "10.1.0.0/16:22", True),
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/16", "10.0.0.0/8", False),
    ("10.0.0.0/8", "internal.corp", False),          # an IP rule never covers a name
    ("internal.corp", "10.0.0.1", False),
    ("[2001:db8::/32]:443", "[2001:db8::1]:443", True),
    ("10.0.0.0/8", "2001:db8::1", False),
])
def test_rule_covers(outer: str, inner: str, ok: bool) -> None:
    assert rule_covers(NetRule.parse(outer), NetRule.parse(inner)) is ok
