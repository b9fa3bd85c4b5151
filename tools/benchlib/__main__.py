"""Entry point: ``python -m benchlib`` (what tools/bench runs)."""

from benchlib.cli import main

main()
