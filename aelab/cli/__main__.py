"""``python -m aelab.cli ...`` is the ``aelab`` command."""

from aelab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
