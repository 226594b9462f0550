"""``python -m sktransfer``: the ``sktransfer`` command line (see ``sktransfer._cli``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
