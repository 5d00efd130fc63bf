"""`python -m meshctl` is the same as the `meshctl` command."""

from meshctl.cli.entry import main

main()
