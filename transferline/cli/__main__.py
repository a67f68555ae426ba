"""`python -m transferline.cli`: the same as the `transferline` command."""

from transferline.cli.main import main

main()
