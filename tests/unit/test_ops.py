"""The op table (`kerneld.ops`) against what it stands for: the manager's method signatures,
both clients' methods, and docs/protocol.md's table of operations."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kerneld import InvalidArgument
from kerneld.client import AsyncClient, Client
from kerneld.manager import KernelManager
from kerneld.ops import OPS, CreateKernel, KernelSpec, check_args, decode, lookup

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_NOT_ON_THE_WIRE = {"self", "caller"}  # `caller`: set by the daemon from the peer, never sent
_NO_DEFAULT = msgspec.NODEFAULT


def _params(func: Any) -> dict[str, Any]:
    """name → default (`_NO_DEFAULT` if required) of a method's wire arguments."""
    sig = inspect.signature(func)
    return {name: (_NO_DEFAULT if prm.default is inspect.Parameter.empty else prm.default)
            for name, prm in sig.parameters.items() if name not in _NOT_ON_THE_WIRE}


def _fields(op_name: str) -> dict[str, Any]:
    return {f.name: (_NO_DEFAULT if f.required else f.default)
            for f in msgspec.structs.fields(OPS[op_name].args_type)}


@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.kind != "local"])
def test_each_ops_fields_are_its_manager_methods_arguments(name: str) -> None:
    assert _params(getattr(KernelManager, OPS[name].method)) == _fields(name)


@pytest.mark.parametrize("name", [n for n in OPS if n not in ("subscribe", "unsubscribe")])
def test_each_op_is_a_method_of_both_clients_with_the_same_arguments(name: str) -> None:
    for client in (AsyncClient, Client):
        assert _params(getattr(client, name)) == _fields(name), (client.__name__, name)


def test_the_docs_table_lists_every_op_with_its_arguments() -> None:
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| `(\w+)` \| (.*?) \| ", line)
        if match:
            rows[match.group(1)] = match.group(2)
    assert set(rows) == set(OPS), "docs/protocol.md's table and kerneld.ops.OPS differ"
    for name, op in OPS.items():
        cell = rows[name]
        if cell.startswith("as `"):  # "as `execute`"
            cell = rows[cell.split("`")[1]]
        while re.search(r"\([^()]*\)", cell):  # what is said of an argument, not one
            cell = re.sub(r"\([^()]*\)", "", cell)
        named = set(re.findall(r"`(\w+)`", cell))
        bold = set(re.findall(r"\*\*`(\w+)`\*\*", cell))
        assert named == set(op.args), (name, named, set(op.args))
        assert bold == op.required, (name, bold, op.required)


def test_decode_gives_the_ops_struct_and_refuses_what_does_not_fit() -> None:
    op = lookup("create_kernel")
    args = decode(op, {"namespace": "n", "inactivity_timeout": 3})
    assert op.kind == "call" and isinstance(args, CreateKernel) and KernelSpec is CreateKernel
    assert (args.namespace, args.mode, args.env) == ("n", "worker", None)
    with pytest.raises(msgspec.ValidationError):  # forbid_unknown_fields, for the typed path
        msgspec.convert({"nope": 1}, CreateKernel)
    with pytest.raises(InvalidArgument, match="unknown op 'nope'"):
        lookup("nope")
    with pytest.raises(InvalidArgument, match=r"create_kernel: argument env must be dict or "
                                               r"null, not list"):
        decode(op, {"env": []})


def test_check_args() -> None:
    op = OPS["execute"]
    check_args(op, {"kernel_id": "k", "code": "1", "silent": True})
    with pytest.raises(InvalidArgument, match=r"execute: unknown arguments a, b \(accepted: "):
        check_args(op, {"kernel_id": "k", "code": "1", "b": 1, "a": 2})
    with pytest.raises(InvalidArgument, match="missing required argument code"):
        check_args(op, {"kernel_id": "k"})
    with pytest.raises(InvalidArgument, match="argument code must be str, not int"):
        check_args(op, {"kernel_id": "k", "code": 1})
    with pytest.raises(InvalidArgument, match="allow_stdin must be bool"):
        check_args(op, {"kernel_id": "k", "code": "1", "allow_stdin": "yes"})
    with pytest.raises(InvalidArgument, match="timeout must be int or float or null, not bool"):
        check_args(OPS["set_inactivity_timeout"], {"kernel_id": "k", "timeout": True})
    check_args(OPS["set_inactivity_timeout"], {"kernel_id": "k", "timeout": None})
