"""Code that runs in the runtime interpreter: the zygote, its workers and the IPython engine.

Every module here is imported by the zygote before it forks (`kerneld.runtime.zygote`): a
worker is confined the moment it is forked and can no longer read kerneld's source, so it can
only use what the zygote loaded. Hence no lazy imports in this package, and of the rest of
kerneld only the wire records (`kerneld.protocol`): the runtime loads no more of the daemon
than a worker speaks (both held by tests/unit/test_runtime_imports.py).

The in-process kernel (`kerneld.backends.inprocess`) runs the same engine and request loop
(`engine`, `serve`) on a thread of the daemon's own interpreter.
"""
