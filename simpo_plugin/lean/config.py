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


# Response tokens per chunk of the lean head when `simpo_logps_chunk_size` is not given, by device type. CPU: measured
# (docs/performance.md, "Reading the numbers": 128 to 1024 ran at the same speed, 256 keeps the peak low). CUDA:
# from the arithmetic of a trainable head's backward, to be measured by benchmarks/gpu_check.sh: each chunk
# read-modify-writes the fp32 (V x H) weight gradient (about 2.5 GiB of HBM traffic at V = 128k, H = 2048), which a
# 256-token chunk's matmuls do not cover, and a 1024-token chunk's do, for a temporary of 1024 x V x 4 bytes.
CHUNK_SIZE_BY_DEVICE = {"cpu": 256, "cuda": 1024}


def chunk_size_for(device_type: str) -> int:
    """The default response tokens per chunk on ``device_type`` (``"cpu"``, ``"cuda"``, ...; others: the CPU's)."""
    return CHUNK_SIZE_BY_DEVICE.get(device_type, CHUNK_SIZE_BY_DEVICE["cpu"])


@dataclass(frozen=True, kw_only=True)
class LeanConfig:
    """Which fast paths the forward takes (each exact; the stage maps its ``simpo_*`` keys onto these).

    Attributes:
        lean_logps: log-probs at response positions only, in chunks, with no full-vocabulary logits.
        logps_chunk_size: response tokens per chunk of the lean head (peak ~ chunk x vocabulary x 4 bytes);
            None: :data:`CHUNK_SIZE_BY_DEVICE` for the batch's device.
        prefix_sharing: encode [prompt][chosen][rejected] so each prompt is computed once (sdpa/eager).
        padding_free: without the route, pack the batch into one row with a dense block-diagonal mask.
        attention_route: one packed row, attention per segment, no dense mask (sdpa/eager).
    """

    lean_logps: bool = True
    logps_chunk_size: int | None = None
    prefix_sharing: bool = True
    padding_free: bool = False
    attention_route: bool = True
