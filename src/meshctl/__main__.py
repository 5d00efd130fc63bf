"""`python -m meshctl` is the same as the `meshctl` command."""

from meshctl.cli.app import main

main()
