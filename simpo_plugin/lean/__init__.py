"""The lean SimPO forward: everything between a collated batch and its per-sequence log-prob sums.

The trainer calls only :class:`SequenceLogps`. Mental model of one call::

    SequenceLogps(model, unwrapped, batch)                               sequence.py: picks layout, route, head
      layout:   collated 2B padded rows -> one packed row                layout.py
                [prompt][chosen][rejected] per pair, no padding, position ids restart for rejected
      route:    model(**inputs, simpo_segments=...)                      attention.py
                each attention layer computes its segments ([prompt;chosen] causal, [rejected] -> prompt + itself)
      head:     final hidden states at the response positions only      head.py
                chunked label log-probs, no (rows, L, V) logits           kernel.py
      sums:     index_add per sequence -> (2B,) sums and lengths

Each piece falls back on its own when a model cannot take it (dense-mask layouts, plain log-probs), with one
warning; every fast path is exact (tests/test_lean_forward.py, tests/test_logprob.py).
"""

from .sequence import SequenceLogps


__all__ = ["SequenceLogps"]
