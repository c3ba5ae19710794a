"""``parasim``: the command line above the engines. It registers the simulator's commands
(``simulator/cli.py``), the executor's (``executor/commands.py``, which load MPI and Numba only
when they run) and the report's (``reports/cli.py``); the engines import none of it."""
