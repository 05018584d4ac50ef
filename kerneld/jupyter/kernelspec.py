"""`kerneld jupyter install | uninstall`: one Jupyter kernelspec per permission profile.

A kernelspec is a directory `<data dir>/kernels/kerneld-<profile>/` holding `kernel.json`;
every Jupyter client (jupyter_client, JupyterLab/Server, VS Code, JupyterHub, nbclient,
papermill) launches `argv` from it with the connection file's path filled in. Our argv runs
the adapter (`python -m kerneld.jupyter`) with the python running this command, so the
kernelspec keeps working when `kerneld` is not on a client's PATH.

The directories follow jupyter_core's conventions, written here rather than through
`jupyter_client.KernelSpecManager`: the daemon's environment must not need jupyter_client
(it is only a dev extra), and the conventions are four lines:
- `--user`: `$JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else `~/.local/share/jupyter`;
- `--sys-prefix`: `sys.prefix/share/jupyter` (a virtualenv's own Jupyter sees it);
- `--prefix P`: `P/share/jupyter` (point `JUPYTER_PATH` at it);
- none: the system directory `/usr/local/share/jupyter` (what `jupyter kernelspec install`
  uses without options).
`jupyter kernelspec list` finds all of them; tests check that with the real client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from kerneld.errors import InvalidArgument

__all__ = ["DEFAULT_PROFILES", "install", "kernel_json", "kernels_dir", "spec_name", "uninstall"]

# Installed without --profile: the shipped profiles meant for untrusted code. `trusted`
# (host network, reads everything) only when named, so a notebook user never picks it by
# accident from a kernel menu.
DEFAULT_PROFILES = ("default", "data-science", "networked")
PREFIX = "kerneld-"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")  # kernelspec names: jupyter_client's pattern


def kernels_dir(*, user: bool = False, sys_prefix: bool = False,
                prefix: str | None = None) -> Path:
    """`<data dir>/kernels` for the chosen location (module docstring)."""
    if sum((user, sys_prefix, prefix is not None)) > 1:
        raise InvalidArgument("choose at most one of --user, --sys-prefix and --prefix")
    if prefix is not None:
        base = Path(prefix).expanduser().absolute() / "share" / "jupyter"
    elif sys_prefix:
        base = Path(sys.prefix) / "share" / "jupyter"
    elif user:
        env = os.environ.get("JUPYTER_DATA_DIR")
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        base = Path(env).expanduser() if env else Path(xdg) / "jupyter"
    else:
        base = Path("/usr/local/share/jupyter")
    return base / "kernels"


def spec_name(profile: str) -> str:
    if not _NAME.fullmatch(profile):
        raise InvalidArgument(f"profile name {profile!r} cannot name a kernelspec (letters, "
                              "digits, '.', '_' and '-' only)")
    return (PREFIX + profile).lower()


def kernel_json(profile: str, address: str | None = None,
                python: str | None = None) -> dict[str, Any]:
    """The kernelspec of one profile. `interrupt_mode: signal`: clients that launch argv send
    SIGINT to the adapter, which interrupts the kerneld kernel (jupyter_client, VS Code and
    JupyterHub all do so); `debugger: false`: there is no debugpy in the runtime."""
    argv = [python or os.path.abspath(sys.executable), "-m", "kerneld.jupyter",
            "-f", "{connection_file}", "--profile", profile]
    if address:
        argv += ["--address", address]
    return {"argv": argv, "display_name": f"Python 3 (kerneld: {profile})",
            "language": "python", "interrupt_mode": "signal", "env": {},
            "metadata": {"debugger": False,
                         "kerneld": {"profile": profile, "address": address}}}


def install(profiles: list[str] | None = None, *, address: str | None = None,
            user: bool = False, sys_prefix: bool = False,
            prefix: str | None = None) -> list[Path]:
    """Write (or overwrite) one kernelspec per profile; return their directories."""
    root = kernels_dir(user=user, sys_prefix=sys_prefix, prefix=prefix)
    written = []
    for profile in dict.fromkeys(profiles or DEFAULT_PROFILES):
        target = root / spec_name(profile)
        try:
            target.mkdir(parents=True, exist_ok=True)
            tmp = target / "kernel.json.tmp"
            tmp.write_text(json.dumps(kernel_json(profile, address), indent=1) + "\n")
            os.chmod(tmp, 0o644)
            tmp.replace(target / "kernel.json")
        except OSError as exc:
            raise InvalidArgument(f"cannot write the kernelspec {target}: {exc}") from None
        written.append(target)
    return written


def _ours(directory: Path) -> bool:
    try:
        spec = json.loads((directory / "kernel.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and "kerneld" in (spec.get("metadata") or {})


def uninstall(profiles: list[str] | None = None, *, user: bool = False,
              sys_prefix: bool = False, prefix: str | None = None) -> list[Path]:
    """Remove our kernelspecs (those named, else every `kerneld-*` one we wrote) from the
    location; a directory whose kernel.json is not ours is left alone."""
    root = kernels_dir(user=user, sys_prefix=sys_prefix, prefix=prefix)
    if profiles:
        candidates = [root / spec_name(profile) for profile in profiles]
    else:
        candidates = sorted(root.glob(PREFIX + "*")) if root.is_dir() else []
    removed = []
    for directory in candidates:
        if directory.is_dir() and _ours(directory):
            try:
                shutil.rmtree(directory)
            except OSError as exc:
                raise InvalidArgument(f"cannot remove the kernelspec {directory}: {exc}") from None
            removed.append(directory)
    return removed
