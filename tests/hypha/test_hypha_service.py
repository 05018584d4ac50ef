"""kerneld as one Hypha service of two hosts: placement, round trips, confinement, tenancy,
quotas, idle streams and the HTTP form, against a real Hypha server and real daemons."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import signal
import time
from collections import Counter
from typing import Any

import pytest
from _fleet import FLEET, ROOT, Fleet, http_call, instance, skip_unconfined

import kerneld
from kerneld.config import HyphaConfig
from kerneld.errors import PermissionDenied
from kerneld.hypha.link import DaemonLink
from kerneld.hypha.service import HostService

pytestmark = [pytest.mark.sandbox, skip_unconfined()]
SELECT = {"mode": "select:min:getEngineLoad"}
A, B = instance("kerneld-a"), instance("kerneld-b")


async def _cleanup(svc: Any) -> None:
    for k in await svc.listKernels():
        await svc.destroyKernel({"kernelId": k["id"]})


async def test_both_instances_are_listed_from_two_users_workspaces(fleet: Fleet) -> None:
    async with fleet.user("alice") as alice, fleet.user("bob") as bob:
        assert alice.config.workspace == "ws-user-alice"
        assert bob.config.workspace == "ws-user-bob"
        assert await fleet.instances(alice) == [A, B]
        assert await fleet.instances(bob) == [A, B]
        svc = await bob.get_service(A)
        times = []
        for _ in range(11):
            t0 = time.perf_counter()
            assert await svc.getEngineLoad() == 0
            times.append(time.perf_counter() - t0)
        # answered from memory: the median includes the round trip through the server
        assert sorted(times)[5] < 0.010, times


async def test_four_creates_spread_two_and_two_then_round_trips(fleet: Fleet) -> None:
    async with fleet.user("alice") as alice:
        created = []
        for _ in range(4):
            svc = await alice.get_service(f"{FLEET}/kerneld", SELECT)
            created.append((svc, await svc.createKernel({})))
        assert Counter(k["serviceId"] for _, k in created) == {A: 2, B: 2}
        for svc, k in created:
            assert svc.id == k["serviceId"]
            assert k["id"].startswith("ws-user-alice:") and k["mode"] == "worker"
        try:
            # executeCode + getExecutionResult (one dict, seed style)
            svc, k = created[0]
            run = await svc.executeCode({"kernelId": k["id"], "code": "print('hi'); 6 * 7"})
            events = await svc.getExecutionResult({"kernelId": k["id"],
                                                   "executionId": run["execution_id"]})
            kinds = [e["type"] for e in events]
            assert kinds == ["stream", "execute_result", "complete"], events
            assert events[1]["data"]["data"]["text/plain"] == "42"
            assert events[-1]["status"] == "success"
            # streamExecution (keyword arguments), events as they happen
            svc, k = created[1]
            seen: list[tuple[str, float]] = []
            t0 = time.monotonic()
            gen = await svc.streamExecution(kernelId=k["id"], code=(
                "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.3)"))
            async for ev in gen:
                seen.append((ev["type"], time.monotonic() - t0))
            assert [t for t, _ in seen].count("stream") >= 2
            assert seen[-1][0] == "complete"
            assert seen[0][1] < seen[-1][1] - 0.4, seen   # the first came before the end
            # an error round trip: execute_error, the seed's error event, complete(error)
            gen = await svc.streamExecution({"kernelId": k["id"], "code": "1/0"})
            events = [ev async for ev in gen]
            assert [e["type"] for e in events] == ["execute_error", "error", "complete"]
            assert events[0]["data"]["ename"] == "ZeroDivisionError"
            assert events[-1]["status"] == "error"
            # state persists; the short id works as well as the full one
            await svc.executeCode({"kernelId": k["id"].split(":", 1)[1], "code": "x = 5"})
            run = await svc.executeCode({"kernelId": k["id"], "code": "x * 2"})
            out = await svc.getExecutionResult({"kernelId": k["id"],
                                                "executionId": run["executionId"]})
            assert out[0]["data"]["data"]["text/plain"] == "10"
        finally:
            for svc, k in created:
                await svc.destroyKernel({"kernelId": k["id"]})
        assert await (await alice.get_service(A)).getEngineLoad() == 0


CONFINEMENT = """
import os
fields = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)
(os.getuid(), fields['Seccomp'].strip(), fields['NoNewPrivs'].strip(),
 sorted(k for k in os.environ if 'HYPHA' in k), os.environ.get('MINE'))
"""


async def test_kernels_on_both_hosts_are_confined_and_get_no_token(fleet: Fleet) -> None:
    async with fleet.user("carol") as carol:
        for name in (A, B):
            svc = await carol.get_service(name)
            k = await svc.createKernel({"env": {"MINE": "1"}})
            try:
                run = await svc.executeCode({"kernelId": k["id"], "code": CONFINEMENT})
                out = await svc.getExecutionResult({"kernelId": k["id"],
                                                    "executionId": run["execution_id"]})
                uid, seccomp, nnp, hypha, mine = ast.literal_eval(
                    out[0]["data"]["data"]["text/plain"])
                assert uid != 0 and seccomp == "2" and nnp == "1"
                assert hypha == [] and mine == "1"
            finally:
                await svc.destroyKernel({"kernelId": k["id"]})


def _not_found(text: str) -> bool:
    return "not found" in text and "denied" not in text.lower()


async def test_user_b_cannot_reach_user_a_kernels_through_any_function(fleet: Fleet) -> None:
    async with fleet.user("alice") as alice, fleet.user("bob") as bob:
        a_svc = await alice.get_service(A)
        kernel = await a_svc.createKernel({})
        run = await a_svc.executeCode({"kernelId": kernel["id"], "code": "secret = 41"})
        await a_svc.getExecutionResult({"kernelId": kernel["id"],
                                        "executionId": run["execution_id"]})
        b_svc = await bob.get_service(A)   # the very instance that holds alice's kernel
        try:
            short = kernel["id"].split(":", 1)[1]
            calls: dict[str, dict[str, Any]] = {
                "destroyKernel": {}, "getKernelInfo": {}, "pingKernel": {},
                "restartKernel": {}, "interruptKernel": {}, "getInactivityTimerStatus": {},
                "setInactivityTimeout": {"timeout": 1000}, "resetInactivityTimer": {},
                "executeCode": {"code": "secret"}, "streamExecution": {"code": "secret"},
                "getExecutionResult": {"executionId": run["execution_id"]},
                "completeCode": {"code": "sec", "cursorPos": 3},
                "inspectCode": {"code": "secret", "cursorPos": 6},
                "inputReply": {"value": "x"}}
            for name, extra in calls.items():
                for kid in (kernel["id"], short, f"ws-user-bob:{short}"):
                    with pytest.raises(Exception) as err:
                        await getattr(b_svc, name)({"kernelId": kid, **extra})
                    assert _not_found(str(err.value)), (name, kid, str(err.value)[-300:])
            assert await b_svc.listKernels() == []
            status = await b_svc.getStatus()
            assert status["kernelStats"]["namespaceCount"] == 0
            # alice's kernel is untouched and still hers
            run = await a_svc.executeCode({"kernelId": kernel["id"], "code": "secret + 1"})
            out = await a_svc.getExecutionResult({"kernelId": kernel["id"],
                                                  "executionId": run["execution_id"]})
            assert out[0]["data"]["data"]["text/plain"] == "42"
            assert [k["id"] for k in await a_svc.listKernels()] == [kernel["id"]]
        finally:
            await a_svc.destroyKernel({"kernelId": kernel["id"]})


async def test_lifecycle_functions_timers_and_kerneld_additions(fleet: Fleet) -> None:
    async with fleet.user("dave") as dave:
        svc = await dave.get_service(B)
        k = await svc.createKernel({"inactivityTimeout": 120_000, "profile": "default"})
        kid = k["id"]
        try:
            status = await svc.getInactivityTimerStatus({"kernelId": kid})
            assert status["inactivityTimeout"] == 120_000 and status["isTimeoutEnabled"]
            assert 0 < status["timeUntilShutdown"] <= 120_000
            assert (await svc.setInactivityTimeout({"kernelId": kid, "timeout": 60_000})
                    )["success"]
            assert (await svc.getInactivityTimerStatus({"kernelId": kid})
                    )["inactivityTimeout"] == 60_000
            with pytest.raises(Exception, match="timeout must be"):
                await svc.setInactivityTimeout({"kernelId": kid, "timeout": 0})
            assert (await svc.resetInactivityTimer({"kernelId": kid}))["kernelId"] == kid
            assert (await svc.pingKernel({"kernelId": kid}))["success"]
            # interrupt a running cell, through its stream
            gen = await svc.streamExecution({"kernelId": kid, "code": "import time\n"
                                             "print('go', flush=True); time.sleep(30)"})
            first = await gen.__anext__()
            assert first["type"] == "stream"
            assert (await svc.interruptKernel({"kernelId": kid}))["success"]
            rest = [ev async for ev in gen]
            assert rest[0]["data"]["ename"] == "KeyboardInterrupt", rest
            # completion and inspection (kerneld's)
            reply = await svc.completeCode({"kernelId": kid, "code": "import o", "cursorPos": 8})
            assert "os" in reply["matches"]
            assert (await svc.inspectCode({"kernelId": kid, "code": "len", "cursorPos": 3})
                    )["found"]
            # input() answered through inputReply
            gen = await svc.streamExecution({"kernelId": kid, "allowStdin": True,
                                             "code": "name = input('who? ')\nname.upper()"})
            ask = await gen.__anext__()
            assert ask["type"] == "input_request" and ask["data"]["prompt"] == "who? "
            assert (await svc.inputReply({"kernelId": kid, "value": "ada"}))["success"]
            events = [ev async for ev in gen]
            assert events[0]["data"]["data"]["text/plain"] == "'ADA'"
            # restart: same id, fresh state; info has the seed's fields and the history
            await svc.executeCode({"kernelId": kid, "code": "y = 1"})
            assert (await svc.restartKernel({"kernelId": kid}))["success"]
            info = await svc.getKernelInfo({"kernelId": kid})
            assert {"id", "name", "mode", "created", "status", "history"} <= set(info)
            assert info["history"] and all("script" in h for h in info["history"])
            run = await svc.executeCode({"kernelId": kid, "code": "'y' in globals()"})
            out = await svc.getExecutionResult({"kernelId": kid,
                                                "executionId": run["execution_id"]})
            assert out[0]["data"]["data"]["text/plain"] == "False"
            # a request narrows its profile, never widens it
            small = await svc.createKernel({"limits": {"memory": "128MiB"},
                                            "permissions": {"net": []}})
            await svc.destroyKernel({"kernelId": small["id"]})
            with pytest.raises(Exception, match="exceeds profile"):
                await svc.createKernel({"limits": {"memory": "64GiB"}})
            # refusals name the problem
            for bad, words in (({"mode": "main_thread-python"}, "not offered"),
                               ({"profile": "trusted"}, "not offered by this service"),
                               ({"filesystem": {"enabled": True, "root": "/"}}, "filesystem"),
                               ({"colour": "red"}, "unknown argument 'colour'")):
                with pytest.raises(Exception, match=re.escape(words)):
                    await svc.createKernel(bad)
            with pytest.raises(Exception, match="no code provided"):
                await svc.executeCode({"kernelId": kid, "code": ""})
            # getExecutionResult waits for the end, within its timeout
            run = await svc.executeCode({"kernelId": kid, "code": "import time; time.sleep(1.5)"})
            with pytest.raises(Exception, match="still running after 300 ms"):
                await svc.getExecutionResult({"kernelId": kid, "timeout": 300,   # ms
                                              "executionId": run["execution_id"]})
            out = await svc.getExecutionResult({"kernelId": kid,
                                                "executionId": run["execution_id"]})
            assert out[-1]["type"] == "complete" and out[-1]["status"] == "success", out
            assert out[-1]["executionId"] == run["execution_id"]
        finally:
            await _cleanup(svc)


async def test_workspace_quotas_on_a_host(fleet: Fleet) -> None:
    async with fleet.user("erin") as erin, fleet.user("fred") as fred:
        svc = await erin.get_service(A)
        try:
            kernels = [await svc.createKernel({}) for _ in range(3)]
            with pytest.raises(Exception, match="max_kernels_per_workspace = 3"):
                await svc.createKernel({})
            other = await erin.get_service(B)   # the quota is per host
            await other.destroyKernel({"kernelId": (await other.createKernel({}))["id"]})
            # executions running or queued, per workspace: 3 in these tests
            kid = kernels[0]["id"]
            for _ in range(3):
                await svc.executeCode({"kernelId": kid, "code": "import time; time.sleep(30)"})
            with pytest.raises(Exception, match="max_executions_per_workspace = 3"):
                await svc.streamExecution({"kernelId": kernels[1]["id"], "code": "1"})
            fred_svc = await fred.get_service(A)     # another workspace is not counted
            mine = await fred_svc.createKernel({})
            run = await fred_svc.executeCode({"kernelId": mine["id"], "code": "1 + 1"})
            await fred_svc.getExecutionResult({"kernelId": mine["id"],
                                               "executionId": run["execution_id"]})
            await fred_svc.destroyKernel({"kernelId": mine["id"]})
            await svc.destroyKernel({"kernelId": kid})   # its executions end: slots free
            run = await svc.executeCode({"kernelId": kernels[1]["id"], "code": "2 + 2"})
            out = await svc.getExecutionResult({"kernelId": kernels[1]["id"],
                                                "executionId": run["execution_id"]})
            assert out[0]["data"]["data"]["text/plain"] == "4"
        finally:
            await _cleanup(svc)


async def test_an_abandoned_stream_is_closed_after_its_idle_timeout(fleet: Fleet) -> None:
    async with fleet.user("frank") as frank:
        svc = await frank.get_service(B)
        k = await svc.createKernel({})
        try:
            gen = await svc.streamExecution({"kernelId": k["id"], "code": (
                "import time\nfor i in range(20):\n    print(i, flush=True); time.sleep(0.2)")})
            assert (await gen.__anext__())["type"] == "stream"
            before = (await svc.getStatus())["hypha"]
            assert before["streams"] == 1
            await asyncio.sleep(3.0)   # [hypha] stream_idle_timeout = 2 in these tests
            after = (await svc.getStatus())["hypha"]
            # the caller's view is closed, but the cell still runs (4 s in all): its
            # execution keeps its quota slot until it really ends
            assert after["streams"] == 0 and after["executions"] == 1, after
            assert after["idleStreamsClosed"] == before["idleStreamsClosed"] + 1
            with pytest.raises(StopAsyncIteration):
                await gen.__anext__()
            deadline = time.monotonic() + 5
            while (await svc.getStatus())["hypha"]["executions"]:
                assert time.monotonic() < deadline, "the slot was not released at the end"
                await asyncio.sleep(0.2)
        finally:
            await _cleanup(svc)


async def test_a_workspace_named_like_a_local_namespace_cannot_reach_its_kernels(
        fleet: Fleet) -> None:
    """Hypha workspace WS owns the daemon namespace hypha.WS: kernels that a local user (or
    another adapter, such as the Jupyter one's "jupyter") made in namespace WS stay out of
    reach of WS's Hypha callers, although the attach process talks to the daemon as root."""
    address = fleet.daemons["kerneld-a"].address
    with kerneld.connect(address) as local:
        local_id = local.create_kernel(id="local", namespace="ws-user-henry")
        assert local_id == "ws-user-henry:local"
        try:
            async with fleet.user("henry") as henry:
                svc = await henry.get_service(A)
                assert await svc.listKernels() == []
                for name, extra in (("destroyKernel", {}), ("executeCode", {"code": "1"}),
                                    ("getKernelInfo", {}), ("interruptKernel", {})):
                    for kid in (local_id, "local"):
                        with pytest.raises(Exception) as err:
                            await getattr(svc, name)({"kernelId": kid, **extra})
                        assert _not_found(str(err.value)), (name, kid, str(err.value)[-300:])
                # the positive control: henry sees and uses its own kernel, in the seed's shape
                own = await svc.createKernel({})
                try:
                    assert own["id"].startswith("ws-user-henry:") and own["id"] != local_id
                    assert [k["id"] for k in await svc.listKernels()] == [own["id"]]
                    run = await svc.executeCode({"kernelId": own["id"], "code": "6 * 7"})
                    assert run["kernelId"] == own["id"]
                    out = await svc.getExecutionResult({"kernelId": own["id"],
                                                        "executionId": run["execution_id"]})
                    assert out[0]["data"]["data"]["text/plain"] == "42"
                    ids = local.get_kernel_ids()
                    assert f"hypha.{own['id']}" in ids and own["id"] not in ids
                finally:
                    await svc.destroyKernel({"kernelId": own["id"]})
            # the local kernel is untouched
            assert local_id in local.get_kernel_ids()
            assert local.execute(local_id, "1 + 1").result["data"]["text/plain"] == "2"
        finally:
            local.destroy_kernel(local_id)


async def test_anonymous_callers_and_the_host_wide_kernel_cap(fleet: Fleet) -> None:
    from hypha_rpc import connect_to_server
    anonymous = await connect_to_server({"server_url": fleet.server.url, "method_timeout": 10})
    try:
        assert anonymous.config.workspace.startswith("ws-user-anonymouz-")
        svc = await anonymous.get_service(A)
        with pytest.raises(Exception, match=r"allow_anonymous = false"):
            await svc.createKernel({})
        assert await svc.listKernels() == []
    finally:
        await anonymous.disconnect()
    # allow_anonymous = true lets them (the same service functions, in this process, on the
    # same real daemon)
    link = DaemonLink(fleet.daemons["kerneld-a"].address, "test-host")
    await link.start()
    try:
        context = {"ws": "ws-user-anonymouz-test", "user": {"is_anonymous": True}}
        refusing = HostService(link, HyphaConfig(), fleet_workspace=FLEET)
        with pytest.raises(PermissionDenied, match="allow_anonymous"):
            await refusing.createKernel({}, context=context)
        allowing = HostService(link, HyphaConfig(allow_anonymous=True), fleet_workspace=FLEET)
        made = await allowing.createKernel({}, context=context)
        await allowing.destroyKernel({"kernelId": made["id"]}, context=context)
    finally:
        await link.close()
    # max_kernels: 5 on each host in these tests, all workspaces together
    async with fleet.user("ivan") as ivan, fleet.user("judy") as judy:
        iv, ju = await ivan.get_service(A), await judy.get_service(A)
        try:
            for _ in range(3):
                await iv.createKernel({})
            for _ in range(2):
                await ju.createKernel({})
            with pytest.raises(Exception, match=r"max_kernels = 5"):
                await ju.createKernel({})          # judy has 2 of her 3: the host is full
            on_b = await judy.get_service(B)      # the cap is per host
            await on_b.destroyKernel({"kernelId": (await on_b.createKernel({}))["id"]})
        finally:
            await _cleanup(iv)
            await _cleanup(ju)


async def test_a_failed_registration_is_retried_while_the_daemon_is_up(fleet: Fleet) -> None:
    """The Hypha server refuses this host's first registration (injected: a real server
    refuses only for reasons that do not pass by themselves); the daemon stays up, so no
    up/down change would ever register it again: the sweep must."""
    from kerneld.hypha.attach import Attachment, Settings

    failures: list[str] = []

    class Refused(Attachment):
        async def _connect(self) -> None:
            await super()._connect()
            real = self.server.register_service

            async def refuse_once(*args: Any, **kwargs: Any) -> Any:
                if not failures:
                    failures.append("refused")
                    raise ConnectionError("injected: the server refused the registration")
                return await real(*args, **kwargs)
            self.server.register_service = refuse_once

    config = HyphaConfig(server_url=fleet.server.url, workspace=FLEET)
    attachment = Refused(Settings(config, fleet.token, "kerneld-retry",
                                  fleet.daemons["kerneld-a"].address))
    running = asyncio.ensure_future(attachment.run())
    loop = asyncio.get_running_loop()
    try:
        async with fleet.user("kim") as kim:
            took = await fleet.wait_instances(kim, [A, B, instance("kerneld-retry")], 10.0)
            assert failures == ["refused"] and took < 10
            attachment._stop.set()
            assert await asyncio.wait_for(running, 10) == 0
            await fleet.wait_instances(kim, [A, B], 5.0)
    finally:
        attachment._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 10)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def test_the_http_form_of_docs_hypha_md_works(fleet: Fleet) -> None:
    """docs/hypha.md's HTTP form, as a plain HTTP client sends it."""
    doc = (ROOT / "docs" / "hypha.md").read_text()
    assert "/kerneld-fleet/services/kerneld/createKernel?_mode=select:min:getEngineLoad" in doc
    assert "/kerneld-fleet/services/kerneld-a:kerneld/executeCode" in doc
    token = fleet.server.token("grace")
    base = f"{fleet.server.url}/{FLEET}/services"
    status, kernel = http_call(f"{base}/kerneld/createKernel?_mode=select:min:getEngineLoad",
                               token, {})
    assert status == 200, kernel
    assert kernel["id"].startswith("ws-user-grace:")
    exact = f"{base}/{kernel['serviceId'].split('/', 1)[1]}"
    try:
        status, run = http_call(f"{exact}/executeCode", token,
                                {"kernelId": kernel["id"], "code": "6 * 7"})
        assert status == 200, run
        status, events = http_call(f"{exact}/getExecutionResult", token,
                                   {"kernelId": kernel["id"], "executionId": run["execution_id"]})
        assert status == 200, events
        assert events[0]["data"]["data"]["text/plain"] == "42"
        status, listed = http_call(f"{exact}/listKernels", token)
        assert status == 200 and [k["id"] for k in listed] == [kernel["id"]]
        # another user's call for that kernel: 404, "not found"
        status, body = http_call(f"{exact}/getKernelInfo", fleet.server.token("mallory"),
                                 {"kernelId": kernel["id"]})
        assert status == 404 and "not found" in json.dumps(body), body
    finally:
        status, body = http_call(f"{exact}/destroyKernel", token, {"kernelId": kernel["id"]})
        assert status == 200 and body == {"success": True}, body
