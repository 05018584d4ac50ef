"""kerneld as a Hypha service: `kerneld hypha` attaches a host's daemon to a Hypha server as
one instance of a service every host of a fleet shares (docs/hypha.md).

Modules, one per role: `args` (the seed's calling conventions and kernel-id scoping), `state`
(results, open streams, quotas), `link` (the watched connection to the local daemon),
`service` (the service functions, knowing no Hypha connection), `attach` (the process: Hypha
connection, registration, reconnection, shutdown). Only `attach` imports hypha-rpc (the
optional extra `kerneld[hypha]`), and only when it runs.
"""
