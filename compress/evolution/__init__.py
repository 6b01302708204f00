"""GP evolution of channel-pruning metrics (Liu et al., GECCO'22), the tool behind ``slimforge evolve-metric``.

Kept apart from the ``gp-prune`` strategy: the strategy only *uses* a metric (it imports
:mod:`compress.evolution.metrics` and, through it, :mod:`compress.evolution.trees`); this package
never imports :mod:`compress.strategies` (except the generic config-field check,
``compress.strategies._parts.config_fields``, see ``tests/test_layering.py``).

Modules, by responsibility (``docs/algorithms/gp-prune.md`` explains the algorithm):

* :mod:`~compress.evolution.primitives` -- the operands and operators of the paper's Tables 1
  and 6 as an untyped ``deap.gp`` primitive set, with deterministic evaluation limits;
* :mod:`~compress.evolution.trees` -- parsing, compiling and scoring trees, the validity test;
* :mod:`~compress.evolution.metrics` -- the named metrics (SOAP, xi*) and ``PruningMetric``;
* :mod:`~compress.evolution.config` -- ``EvolveConfig`` and the joint fitness (Eq. 1, 2);
* :mod:`~compress.evolution.breeding` -- individuals, tournament selection, variation + repair;
* :mod:`~compress.evolution.tasks` -- the two pruning tasks' profiles and data;
* :mod:`~compress.evolution.engine` -- their networks and pruning engine;
* :mod:`~compress.evolution.fitness` -- retraining and the fitness callables;
* :mod:`~compress.evolution.evolve` -- ``evolve_metric``: the loop, checkpoints and outputs;
* :mod:`~compress.evolution.plot` -- the fitness-curve PNG.

Importing this package imports none of its modules.
"""
