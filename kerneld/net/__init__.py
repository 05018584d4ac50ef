"""A kernel's network: `match` decides (pure allowlist rules, no I/O), `proxy` enforces (the
per-kernel CONNECT/SOCKS5 proxy inside the kernel's network namespace). Import the submodule
you need: `match` is pure and light, `proxy` brings asyncio and sockets."""
