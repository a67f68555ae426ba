"""`python -m transferline.cli`: the same as the `transferline` command."""

from transferline.cli import app

app()
