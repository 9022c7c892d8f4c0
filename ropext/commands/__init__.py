"""CLI commands that live in their own modules; ropext/cli.py registers them."""
