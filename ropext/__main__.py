"""``python -m ropext`` is the ``ropext`` command."""

from ropext.cli import main

main()
