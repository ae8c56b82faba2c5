"""The math layer's own configuration: the objective's constants and the forward's fast paths.

Plain frozen dataclasses with no torch, so the stage's arguments (:mod:`simpo_plugin.train.hparams`) can build on
them while the host is still being imported. The stage's ``SimPOConfig`` is both of them.
"""

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SimPOObjective:
    """The objective's constants (the stage builds them from ``pref_beta``, ``simpo_gamma[_beta_ratio]``, ...).

    Attributes:
        beta: reward scale (paper: 2-10).
        gamma: absolute target margin (the official configs give gamma/beta; multiply by beta).
        loss_type: ``sigmoid`` (paper) or ``hinge``.
        label_smoothing: probability eps in [0, 0.5) that a preference label is flipped (sigmoid only).
        sft_weight: weight of the chosen responses' NLL per token (0: pure SimPO).
        length_normalization: reward from the mean token log-prob (SimPO); False uses the sum (the ablation).
    """

    beta: float
    gamma: float
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    length_normalization: bool = True

    @property
    def gamma_beta_ratio(self) -> float:
        return self.gamma / self.beta


@dataclass(frozen=True, kw_only=True)
class LeanConfig:
    """Which fast paths the forward takes (each exact; the stage maps its ``simpo_*`` keys onto these).

    Attributes:
        lean_logps: log-probs at response positions only, in chunks, with no full-vocabulary logits.
        logps_chunk_size: response tokens per chunk of the lean head (peak ~ chunk x vocabulary x 4 bytes).
        prefix_sharing: encode [prompt][chosen][rejected] so each prompt is computed once (sdpa/eager).
        padding_free: without the route, pack the batch into one row with a dense block-diagonal mask.
        attention_route: one packed row, attention per segment, no dense mask (sdpa/eager).
    """

    lean_logps: bool = True
    logps_chunk_size: int = 256
    prefix_sharing: bool = True
    padding_free: bool = False
    attention_route: bool = True
