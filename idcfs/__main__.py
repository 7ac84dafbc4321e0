"""`python -m idcfs` is the `idcfs` command."""

from idcfs.cli import main

main()
