"""The `ringfleet` command, one module per command group; ``ringfleet_cli.main:main`` is its entry point."""
