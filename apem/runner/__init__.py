"""The runner's package: a configuration's images -> maps -> epsilons, each number computed once.

The public entry points are in :mod:`apem.run` (``results``, ``run``, ``Results``). Its modules
import top-down, without cycles; from the top:

* :mod:`apem.runner.distributed` -- the chunks on a Ray cluster (workers compute, this process stores);
* :mod:`apem.runner.remaining` -- what a store still lacks for a configuration, and the estimate announced;
* :mod:`apem.runner.plan` -- what a configuration needs, what is missing, its table from the cells;
* :mod:`apem.runner.housekeeping` -- ``apem store``: size, configurations, unused cells;
* :mod:`apem.runner.chunks` -- the chunk loop: who computes, writing each chunk's cells as it arrives;
* :mod:`apem.runner.compute` -- one chunk's computation (a leaf: the same function on every worker);
* :mod:`apem.runner.cells` -- the cells on disk: atomic, checksummed batches under their keys;
* :mod:`apem.runner.selection` -- the model and the image pool, its classification, the seeded draw;
* :mod:`apem.runner.keys` -- what a number depends on, as a key.

``tests/test_cells.py`` checks the order: no runner module imports one above it, and no
module of apem imports another's private name.
"""
