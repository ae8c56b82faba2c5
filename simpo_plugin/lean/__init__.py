"""The lean SimPO step, pure torch: everything between a collated batch and the loss.

The trainer calls :class:`SequenceLogps` and :class:`SimPOLoss`; the stage builds :class:`LeanConfig` and
:class:`SimPOObjective` from its arguments; the probes ask :func:`partitioned` which parameters ZeRO-3 split.
Mental model of one step::

    SequenceLogps(model, unwrapped, batch)                               sequence.py: picks layout, route, head
      layout:   collated 2B padded rows -> one packed row                layout.py
                [prompt][chosen][rejected] per pair, no padding, position ids restart for rejected
      route:    model(**inputs, simpo_segments=...)                      attention.py
                each attention layer computes its segments ([prompt;chosen] causal, [rejected] -> prompt + itself):
                sdpa/eager per segment without masks, flash-attention in one varlen call
      head:     final hidden states at the response positions only      head.py, holding.py
                chunked label log-probs, no (rows, L, V) logits           kernel.py
      sums:     index_add per sequence -> (2B,) sums and lengths
    SimPOLoss(chosen sums, rejected sums, lengths)                       loss.py: Eq. 6, rewards, margins

Each piece falls back on its own when a model cannot take it (dense-mask layouts, plain log-probs), with one
warning; every fast path is exact (tests/test_lean_forward.py, tests/test_lean_flash.py, tests/test_logprob.py).
This package imports nothing from the stage, the host glue, sampling, pairs, evaluation or LLaMA-Factory
(tests/test_layers.py), and importing it is cheap: torch loads with the first of the names below that is used.
"""

from ..lazy import lazy_attributes
from .config import LeanConfig, SimPOObjective


_LAZY = {
    "SequenceLogps": ".sequence",
    "SimPOLoss": ".loss",
    "SimPOLossOutput": ".loss",
    "simpo_loss": ".loss",
    "partitioned": ".holding",
    "EmptyResponseError": ".layout",
    "LayoutPlan": ".layout",
    "TEXT_KEYS": ".layout",
}
__all__ = [
    "EmptyResponseError",
    "LayoutPlan",
    "LeanConfig",
    "SequenceLogps",
    "SimPOLoss",
    "SimPOLossOutput",
    "SimPOObjective",
    "TEXT_KEYS",
    "partitioned",
    "simpo_loss",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
