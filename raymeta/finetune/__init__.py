"""Fine-tuning populations: the one runner that priors fitting, sweeps and Tune trials share.

Ray-free (the orchestration layer wraps it). From the bottom up:

* ``hparams``: the hyperparameter vocabulary, declared once (``HPARAMS``, ``FinetuneConfig``,
  ``broad_space``);
* ``step``: the pure vmapped population step (``PopulationTrainer``) and its state;
* ``population``: the stateful runner (``Population``: inits, member tensors, best snapshots,
  the in-population PBT rule) and its loop ``run_schedule``;
* ``curves``: the one result type of a run (``Curves``) and the result rows of every command;
* ``run``: one task fine-tuned in-process (a sweep unit), ``evaluate``: tasks x configs (what
  priors are fitted on), ``fit``: the priors-fit driver (``PriorFitConfig``, ``fit_priors``),
  ``priors_file``: the checked ``write_priors`` (priors a tune of the checkpoint can use);
* ``strategy``: INIT+PRIOR+SCHEDULER, the same in ``raymeta tune`` and sweeps;
* ``reference``: the looped, vmap-free reference the step is tested and measured against.
"""

from typing import TYPE_CHECKING

from raymeta.lazy import lazy_attributes

if TYPE_CHECKING:
    from raymeta.finetune.curves import Curves
    from raymeta.finetune.evaluate import evaluate_configs
    from raymeta.finetune.fit import PriorFitConfig, fit_priors
    from raymeta.finetune.hparams import HPARAMS, FinetuneConfig, HParam, broad_space
    from raymeta.finetune.population import Population, run_schedule
    from raymeta.finetune.priors_file import write_priors
    from raymeta.finetune.run import PopulationResult, run_population
    from raymeta.finetune.strategy import Strategy

_WHERE = {
    "Curves": ".curves",
    "evaluate_configs": ".evaluate",
    "PriorFitConfig": ".fit",
    "fit_priors": ".fit",
    "HPARAMS": ".hparams",
    "FinetuneConfig": ".hparams",
    "HParam": ".hparams",
    "broad_space": ".hparams",
    "Population": ".population",
    "run_schedule": ".population",
    "write_priors": ".priors_file",
    "PopulationResult": ".run",
    "run_population": ".run",
    "Strategy": ".strategy",
}


__all__ = [
    "HPARAMS",
    "Curves",
    "FinetuneConfig",
    "HParam",
    "Population",
    "PopulationResult",
    "PriorFitConfig",
    "Strategy",
    "broad_space",
    "evaluate_configs",
    "fit_priors",
    "run_population",
    "run_schedule",
    "write_priors",
]

# names load on first use: ``raymeta.finetune.strategy`` stays torch-free for the CLI, which
# imports it to list the strategy names
__getattr__ = lazy_attributes(__name__, _WHERE)
