"""The exported names are a contract (SPEC.md)."""

from __future__ import annotations

import inspect

import kerneld
from kerneld import KernelEvents, KernelManager, KernelMode


def test_exported_names_are_pinned():
    assert sorted(kerneld.__all__) == sorted([
        "KernelManager", "Kernel", "KernelMode", "KernelEvents", "KernelEvent",
        "ExecutionResult", "ExecutionStream", "create_kernel", "create_kernel_manager",
        "connect", "connect_async", "KernelError", "KernelNotFound", "InvalidArgument",
        "ProfileError", "PermissionDenied", "LimitExceeded", "SandboxUnavailable",
        "KernelStartError", "DaemonUnavailable", "InternalError", "__version__"])


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
        "kernel_restarted", "kernel_terminated", "*"}
