"""``python -m omeloc.cli``: the same as the ``omeloc`` command."""

from omeloc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
