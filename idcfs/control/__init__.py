"""The control socket: how `idcfs prefetch` (a separate process) asks a running mount's
daemon to work for it (docs/SEMANTICS.md, "Control socket")."""
