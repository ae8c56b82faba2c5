"""The host glue: everything that attaches the plugin to an unmodified LLaMA-Factory.

The path through it: the ``.pth`` startup line (:mod:`simpo_plugin._startup`) hands over to
:func:`install_host_hooks` when the interpreter first imports ``llamafactory``; that loads the stages advertised
under the ``llamafactory.stages`` entry point into :data:`REGISTRY` (:mod:`.registry`) and registers one
post-import patch per host touch-point (:mod:`.patches`):

- argument parsing and dispatch (:mod:`.dispatch`): ``stage: simpo`` passes the host's checks, rides the ``dpo``
  branch of the tuner, and reaches the registered workflow;
- LLaMA Board (:mod:`.webui`): the stage in the dropdown, its widgets, their YAML keys;
- the launcher (:mod:`.launcher`, :mod:`._child`): stop signals reach torchrun and its workers.

The rest of the plugin may use :data:`REGISTRY`, :class:`Stage` and :class:`StageRegistry` (to declare a stage),
:data:`SIMPO_UI` (the SimPO stage's widgets, which the stage record names) and :func:`install_host_hooks`.
Nothing here imports torch or gradio at module level.
"""

from .registry import REGISTRY, Stage, StageRegistry
from .webui import SIMPO_UI


def install_host_hooks() -> bool:
    """See :func:`simpo_plugin.host.hooks.install_host_hooks`."""
    from .hooks import install_host_hooks as install

    return install()


def training_keys(stage_class: type) -> set[str]:
    """Every key a ``llamafactory-cli train`` config of a stage whose arguments are ``stage_class`` may hold: the
    host's model, data, training, finetuning and generating keys, and the stage's own."""
    from .config_keys import host_train_classes, known_keys

    return known_keys(*host_train_classes(), stage_class)


__all__ = ["REGISTRY", "SIMPO_UI", "Stage", "StageRegistry", "install_host_hooks", "training_keys"]
