"""The exported names are a contract (SPEC.md)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import kerneld
from kerneld import KernelEvents, KernelManager, KernelMode


def test_exported_names_are_pinned():
    assert sorted(kerneld.__all__) == sorted([
        "KernelManager", "Kernel", "KernelMode", "KernelEvents", "KernelEvent",
        "ExecutionResult", "ExecutionStream", "create_kernel", "create_kernel_manager",
        "connect", "connect_async", "KernelError", "KernelNotFound", "InvalidArgument",
        "ProfileError", "PermissionDenied", "LimitExceeded", "SandboxUnavailable",
        "KernelStartError", "DaemonUnavailable", "InternalError", "__version__"])


def test_every_exported_name_resolves_from_its_home():
    """The lazy table (PEP 562) names the module that defines each name: nothing re-exported."""
    assert set(dir(kerneld)) >= set(kerneld.__all__)
    for name in kerneld.__all__:
        value = getattr(kerneld, name)
        home = kerneld._HOMES.get(name, "kerneld")
        assert name == "__version__" or value.__module__ == home, (name, value.__module__)
    assert set(kerneld._HOMES) < set(kerneld.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        kerneld.no_such_name  # noqa: B018


def test_type_checkers_see_the_same_names_as_the_lazy_table():
    """`if TYPE_CHECKING:` in kerneld/__init__.py imports exactly what `_HOMES` loads."""
    tree = ast.parse(Path(kerneld.__file__).read_text())
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module
                seen.update({alias.name: stmt.module for alias in stmt.names})
    assert {k: v for k, v in seen.items() if v != "kerneld.client"} == kerneld._HOMES


def test_manager_has_every_spec_method():
    for name in ("create_kernel", "destroy_kernel", "destroy_all", "get_kernel",
                 "get_kernel_ids", "list_kernels", "execute", "execute_stream",
                 "on_kernel_event", "off_kernel_event", "input_reply", "interrupt_kernel",
                 "restart_kernel", "ping_kernel", "set_inactivity_timeout",
                 "get_inactivity_timeout", "get_time_until_shutdown", "get_execution_info",
                 "get_ongoing_execution_count", "get_stuck_executions",
                 "force_terminate_kernel", "complete", "inspect", "is_complete",
                 "get_pool_stats", "close", "__aenter__", "__aexit__"):
        assert callable(getattr(KernelManager, name)), name
    params = inspect.signature(KernelManager.create_kernel).parameters
    assert list(params)[1:] == ["id", "namespace", "mode", "profile", "env", "filesystem",
                                "permissions", "limits", "inactivity_timeout",
                                "max_execution_time", "caller"]
    # who asked, for a front end acting for its users: never a wire argument
    assert params["caller"].kind is inspect.Parameter.KEYWORD_ONLY


def test_enum_values_are_wire_names():
    assert KernelMode.WORKER == "worker" and KernelMode.IN_PROCESS == "in_process"
    assert {e.value for e in KernelEvents} == {
        "stream", "display_data", "update_display_data", "execute_result", "execute_error",
        "clear_output", "input_request", "execution_stalled", "kernel_died",
        "kernel_restarted", "kernel_terminated", "comm_open", "comm_msg", "comm_close", "*"}
