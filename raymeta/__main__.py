"""``python -m raymeta``: the ``raymeta`` command, for environments where the console script is
not on ``PATH`` (a venv not activated, ``pipx run``, a cluster's job entrypoint)."""

import sys

from raymeta.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
