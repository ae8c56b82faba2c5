"""The SimPO stage record, advertised under the ``llamafactory.stages`` entry point.

Importing this module must stay cheap (no torch): the host loads it while ``llamafactory`` itself is imported.
"""

from typing import Any

from ..host import SIMPO_UI, Stage
from .hparams import SimPOArguments, resolve_simpo_args


def _run_workflow(*args: Any, **kwargs: Any) -> None:
    from .workflow import run_simpo

    run_simpo(*args, **kwargs)


SIMPO_STAGE = Stage(
    name="simpo",
    run=_run_workflow,
    args_class=SimPOArguments,
    resolve=resolve_simpo_args,
    label="SimPO",
    uses_pair_data=True,
    ui=SIMPO_UI,
)
