"""One module per CLI command; each exposes ``main(args) -> int``. Only cli.py maps results to exit codes."""
