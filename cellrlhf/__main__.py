"""``python -m cellrlhf`` is the same as the ``cellrlhf`` command."""

from cellrlhf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
