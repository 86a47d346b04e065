"""Command-line jobs: each a thin script, `python -m jobs.<name> --help`."""
