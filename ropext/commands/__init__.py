"""Every CLI command, one module each, and the helpers they share (common.py, options.py); ropext/cli.py only
assembles them into the Typer app."""
