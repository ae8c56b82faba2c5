"""The SimPO stage record, advertised under the ``llamafactory.stages`` entry point.

Importing this module must stay cheap (no torch): the host loads it while ``llamafactory`` itself is imported.
"""

from dataclasses import replace
from typing import Any

from ..data import bundled_info
from ..host import SIMPO_UI, Stage
from .hparams import (
    BOARD_HOST_VALUES,
    DEFAULT_BETA,
    DEFAULT_GAMMA_BETA_RATIO,
    DPO_ONLY_KEYS,
    IGNORED_HOST_KEYS,
    SimPOArguments,
    resolve_simpo_args,
)


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
    ui=replace(SIMPO_UI, host_values=BOARD_HOST_VALUES, datasets=bundled_info),  # simpo_demo in the dataset list
    host_defaults={
        "pref_beta": (DEFAULT_BETA, "SimPO's beta, the reward scale (the paper uses 2-10)"),
        "simpo_gamma": (
            DEFAULT_BETA * DEFAULT_GAMMA_BETA_RATIO,
            "SimPO's absolute target margin gamma; when not given, pref_beta x simpo_gamma_beta_ratio "
            f"({DEFAULT_BETA:g} x {DEFAULT_GAMMA_BETA_RATIO:g} by default)",
        ),
        "pref_ftx": (0.0, "weight of an SFT (NLL) term on the chosen responses; 0 is pure SimPO"),
        "logging_nan_inf_filter": (
            False,
            "the host's filter reads every micro-batch's loss on the host (a GPU sync per step) to hide a NaN or "
            "Inf loss from the logged mean; the stage stops at the first non-finite gradient instead, and the log "
            "shows a non-finite loss as it is",
        ),
    },
    rejected_keys=DPO_ONLY_KEYS,
    ignored_keys=IGNORED_HOST_KEYS,
)
