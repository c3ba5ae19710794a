"""``python -m parasim``: the same as the ``parasim`` command. (Guarded: ``mpi4py.futures``
workers import the main module under another name, and must not run the command again.)"""

import sys

from parasim.cli import main

if __name__ == "__main__":
    sys.exit(main())
