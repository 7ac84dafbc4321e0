"""The commands of `idcfs` beside mount and unmount, one module each (idcfs/cli.py parses)."""
