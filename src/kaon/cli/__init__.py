"""The `kaon` command line: Typer commands that only call the SDK; rendering in render.py."""
