"""The SimPO stage: its arguments, its workflow and trainer, and the callbacks that watch a run.

The path through a run: the stage record (:mod:`.stage`, the ``llamafactory.stages`` entry point) names the
arguments (:mod:`.hparams`: ``SimPOArguments`` parsed beside the host's, resolved into a ``SimPOConfig``) and the
workflow :func:`run_simpo` (:mod:`.workflow`), which follows the host's ``run_dpo``: data checks
(:mod:`.data_checks`), the host's loaders and collator, :class:`SimPOTrainer` (:mod:`.trainer`: the lean forward
and the loss from :mod:`simpo_plugin.lean`, per-pair metrics, complete-or-ignored checkpoints via
:mod:`.checkpoints`), and the callbacks:

- always on: the non-finite guard (:mod:`.guards`), preemption (:mod:`.preemption`), CPU gradient buffers
  (:mod:`.grad_buffers`);
- optional, turned off with one line if they fail (:mod:`.optional`): generation probes (:mod:`.probing`, on
  :mod:`.probes`, which calls :mod:`simpo_plugin.sampling`, :mod:`simpo_plugin.pairs`' scorers and
  :mod:`simpo_plugin.evaluation`'s judges and checks through their packages), the collapse monitor
  (:mod:`.monitor`) and the plots (:mod:`.plots`).

The rest of the plugin may use the names below. Importing this package is cheap (the stage record is loaded while
the host is imported); torch and the host load with the workflow.
"""

from typing import Any

from .hparams import SimPOArguments, SimPOConfig, resolve_simpo_args


def run_simpo(*args: Any, **kwargs: Any) -> None:
    """See :func:`simpo_plugin.train.workflow.run_simpo`."""
    from .workflow import run_simpo as run

    run(*args, **kwargs)


__all__ = ["SimPOArguments", "SimPOConfig", "resolve_simpo_args", "run_simpo"]
