"""kerneld kernels as Jupyter kernels (docs/jupyter.md).

- `kernelspec`: `kerneld jupyter install | uninstall`, one kernelspec per profile;
- `wire`: the Jupyter messaging protocol's framing and HMAC signing (pure);
- `adapter`: the process a kernelspec launches (`python -m kerneld.jupyter -f CONN
  --profile NAME`): it binds the connection file's five sockets and drives one kerneld kernel
  of the daemon through `kerneld.client.AsyncClient`;
- `reaper`: the small forked process that destroys that kernel if the adapter dies.

Nothing here is imported by the daemon, the manager or the runtime: this package is a client
of the daemon, like the CLI. Importing the package itself loads nothing.
"""
