"""Memory-lean kernels for SimPO's log-probabilities (imports torch: not imported by ``simpo_plugin``)."""

from .logprob import chunked_label_logps, naive_label_logps


__all__ = ["chunked_label_logps", "naive_label_logps"]
