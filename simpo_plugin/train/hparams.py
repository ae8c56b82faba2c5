"""SimPO's hyperparameters: the keys ``stage: simpo`` adds, and their resolution against the host's keys.

SimPO reuses three host keys (``pref_beta``, ``simpo_gamma``, ``pref_ftx``) so that configs read the same as
the host's built-in ``pref_loss: simpo``; only the defaults differ (the paper's, not DPO's). The target margin
has two conventions: ``simpo_gamma`` is the absolute margin gamma (LLaMA-Factory, TRL, Liger), and
``simpo_gamma_beta_ratio`` is gamma/beta (the official SimPO configs' ``gamma_beta_ratio``).
"""

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal

from ..errors import SimPOArgumentError
from ..lean import LeanConfig, SimPOObjective


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments, TrainingArguments


DEFAULT_BETA = 2.0
DEFAULT_GAMMA_BETA_RATIO = 0.5
LOSS_TYPES = ("sigmoid", "hinge")
DEFAULT_PROBE_STEPS = 50
# LLaMA Board's fields that choosing SimPO sets while they hold the host's defaults (5e-5, 3 epochs): the authors'
# learning-rate range tops out at 1e-6 and they train 1 epoch (docs/simpo.md); above 1e-6 at the board's batch of
# 2 x 8 the collapse monitor's setup hint fires.
BOARD_HOST_VALUES = {"learning_rate": "1e-6", "num_train_epochs": "1.0"}

# Host keys that only make sense for DPO; giving one under `stage: simpo` is an error, with this hint.
DPO_ONLY_KEYS = {
    "pref_loss": "SimPO has its own loss switch: use `simpo_loss_type: sigmoid` or `simpo_loss_type: hinge`.",
    "dpo_label_smoothing": "use `simpo_label_smoothing` instead.",
    "ref_model": "SimPO is reference-free: remove it.",
    "ref_model_adapters": "SimPO is reference-free: remove it.",
    "ref_model_quantization_bit": "SimPO is reference-free: remove it.",
    "pref_bco_weight": "BCO needs a reference model, which SimPO does not have: remove it.",
    "ld_alpha": "SimPO already normalizes by length (the mean log-prob): remove it.",
}


# Host keys that `stage: simpo` accepts and does not use: given with a value other than the host's default, each
# gets one warning saying what the stage does instead (the stage record passes these to the host glue).
IGNORED_HOST_KEYS = {
    "packing": "preference pairs are never packed together; each batch is already one packed row without "
    "padding (the block attention route)",
    "neat_packing": "preference pairs are never packed together (see `packing`)",
    "do_predict": "use `simpo-plugin eval` to generate with the trained model and compare it with its start",
    "predict_with_generate": "use `simpo-plugin eval` (or the generation probes) to see what the model writes",
    "compute_accuracy": "`rewards/accuracies` (preference accuracy) is always logged",
    "do_sample": "the generation probes decode greedily",
    "temperature": "the generation probes decode greedily",
    "top_p": "the generation probes decode greedily",
    "top_k": "the generation probes decode greedily",
    "num_beams": "the generation probes decode greedily",
    "max_new_tokens": "the generation probes stop at `simpo_probe_max_new_tokens`",
    "kto_chosen_weight": "a KTO key",
    "kto_rejected_weight": "a KTO key",
    "ppo_epochs": "a PPO key",
    "ppo_buffer_size": "a PPO key",
    "ppo_target": "a PPO key",
    "ppo_score_norm": "a PPO key",
    "ppo_whiten_rewards": "a PPO key",
    "train_on_prompt": "the loss reads the responses only (a pair's prompt is shared by both answers)",
    "mask_history": "the loss reads the responses only (a pair's prompt is shared by both answers)",
    "reward_model": "a PPO key; probes take `simpo_probe_reward_model`",
}


def _logger():  # noqa: ANN202 - the host's logger (rank-0 methods), loaded with the host, not at import
    from llamafactory.extras import logging

    return logging.get_logger("llamafactory.simpo")


class SimPOCollapseStop(SimPOArgumentError):
    """The run stopped itself on a collapse warning (``simpo_stop_on_collapse``); printed as one line."""


@dataclass
class SimPOArguments:
    """Keys that ``stage: simpo`` adds to the host's YAML/CLI arguments."""

    simpo_gamma_beta_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Target margin as gamma/beta (the official SimPO `gamma_beta_ratio`). Give this or "
            "`simpo_gamma`, not both; 0.5 when neither is given."
        },
    )
    simpo_loss_type: Literal["sigmoid", "hinge"] = field(
        default="sigmoid",
        metadata={"help": "`sigmoid`: -log sigmoid(margin) as in the paper; `hinge`: relu(1 - margin)."},
    )
    simpo_label_smoothing: float = field(
        default=0.0,
        metadata={"help": "Probability in [0, 0.5) that a preference label is flipped (sigmoid loss only)."},
    )

    simpo_length_normalization: bool = field(
        default=True,
        metadata={
            "help": "Reward = beta x MEAN token log-prob (SimPO). False uses the SUM, the paper's ablation that lets "
            "the model exploit length; for studies only."
        },
    )
    simpo_lean_logps: bool = field(
        default=True,
        metadata={
            "help": "Compute log-probs only at response positions, in chunks, without full-vocabulary logits "
            "(exact; falls back to the plain path for models that cannot be split into body and head)."
        },
    )
    simpo_logps_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Response tokens per chunk of the lean path; peak memory ~ chunk x vocabulary x 4 bytes "
            "(default: per device, 256 on CPU, 1024 on CUDA)."
        },
    )
    simpo_prefix_sharing: bool = field(
        default=True,
        metadata={"help": "Encode [prompt][chosen][rejected] so each prompt is computed once (sdpa/eager attention)."},
    )
    simpo_padding_free: bool = field(
        default=False,
        metadata={
            "help": "Where the block attention route is off or unavailable: pack the whole batch into one row with "
            "a dense block-diagonal mask instead of one padded row per pair."
        },
    )
    simpo_attention_route: bool = field(
        default=True,
        metadata={
            "help": "One packed row per batch, no padding, prompts shared, attention computed per segment with no "
            "dense mask (sdpa/eager; exact). False: the dense-mask layouts."
        },
    )
    simpo_cpu_gradient_buffers: bool = field(
        default=True,
        metadata={
            "help": "Single-process CPU training: keep each gradient in a buffer allocated before the first step, "
            "so freed gradients do not fragment the heap (lower peak RSS; exact)."
        },
    )
    simpo_probe_steps: int = field(
        default=DEFAULT_PROBE_STEPS,
        metadata={
            "help": "Greedy generation probes on held-out prompts every N optimizer steps, before the first step and "
            "at the end; 0 turns them off."
        },
    )
    simpo_probe_prompts: int = field(
        default=16, metadata={"help": "Probe prompts: from the eval set if any, else the first training prompts."}
    )
    simpo_probe_max_new_tokens: int = field(default=128, metadata={"help": "Longest probe answer, in tokens."})
    simpo_probe_reward_model: str | None = field(
        default=None,
        metadata={"help": "Score probe answers with a classifier reward model or a LLaMA-Factory `stage: rm` dir."},
    )
    simpo_probe_reward_function: str | None = field(
        default=None, metadata={"help": "Score probe answers with `package.module:function` or `file.py:function`."}
    )
    simpo_probe_judge: str | None = field(
        default=None,
        metadata={
            "help": "Judge each probe answer against the start's answer: `package.module:function` (returns P(A "
            "beats B)) or a local chat model (an LLM judge, read from its logits); logs probe/judge_win_rate."
        },
    )
    simpo_probe_checks: str | None = field(
        default=None,
        metadata={
            "help": "Capability checks at every probe (comma-separated: arithmetic, json_format, constraints, or "
            "JSON files); a significant drop from the start is a warning."
        },
    )
    simpo_stop_on_collapse: bool = field(
        default=False,
        metadata={"help": "On a collapse warning, save a checkpoint and stop the run (it says how to resume)."},
    )

    def __post_init__(self) -> None:
        if self.simpo_logps_chunk_size is not None and self.simpo_logps_chunk_size < 1:
            raise SimPOArgumentError(f"`simpo_logps_chunk_size` must be >= 1, got {self.simpo_logps_chunk_size}.")
        if self.simpo_loss_type not in LOSS_TYPES:
            raise SimPOArgumentError(
                f"`simpo_loss_type` must be one of {', '.join(LOSS_TYPES)}, got `{self.simpo_loss_type}`."
            )
        if self.simpo_gamma_beta_ratio is not None and self.simpo_gamma_beta_ratio < 0:
            raise SimPOArgumentError(
                f"`simpo_gamma_beta_ratio` must be >= 0, got {self.simpo_gamma_beta_ratio}; "
                "the paper's settings use 0.1-0.8."
            )
        if not 0.0 <= self.simpo_label_smoothing < 0.5:
            raise SimPOArgumentError(
                f"`simpo_label_smoothing` must be in [0, 0.5), got {self.simpo_label_smoothing}; "
                "0.5 would make chosen and rejected interchangeable."
            )
        for key in ("simpo_probe_steps", "simpo_probe_prompts", "simpo_probe_max_new_tokens"):
            if getattr(self, key) < (0 if key == "simpo_probe_steps" else 1):
                raise SimPOArgumentError(f"`{key}` must be >= {0 if key == 'simpo_probe_steps' else 1}, got "
                                         f"{getattr(self, key)}.")  # fmt: skip
        if self.simpo_probe_reward_model and self.simpo_probe_reward_function:
            raise SimPOArgumentError(
                "Give one probe scorer, `simpo_probe_reward_model` or `simpo_probe_reward_function`, not both."
            )
        if self.simpo_probe_checks:
            from ..evaluation import load_check_set  # names the key and the bundled sets when one is wrong

            for spec in self.simpo_probe_checks.split(","):
                try:
                    load_check_set(spec.strip())
                except SimPOArgumentError as exc:
                    raise SimPOArgumentError(str(exc).replace("`checks:", "`simpo_probe_checks:")) from exc
        if self.simpo_label_smoothing > 0 and self.simpo_loss_type != "sigmoid":
            raise SimPOArgumentError(
                "`simpo_label_smoothing` only applies to `simpo_loss_type: sigmoid`; remove it or switch the loss."
            )


@dataclass(frozen=True, kw_only=True)
class SimPOConfig(SimPOObjective, LeanConfig):
    """The resolved stage: the objective (:class:`~simpo_plugin.lean.SimPOObjective`), the forward's fast paths
    (:class:`~simpo_plugin.lean.LeanConfig`) and the watchers; it is both of the first two, so the loss and the
    forward take it as it is."""

    cpu_gradient_buffers: bool = True
    probe_steps: int = DEFAULT_PROBE_STEPS
    probe_prompts: int = 16
    probe_max_new_tokens: int = 128
    probe_reward_model: str | None = None
    probe_reward_function: str | None = None
    probe_judge: str | None = None
    probe_checks: str | None = None
    stop_on_collapse: bool = False

    def summary(self) -> str:
        return (
            f"SimPO objective: beta={self.beta:g}, gamma={self.gamma:g} (gamma/beta={self.gamma_beta_ratio:g}), "
            f"loss_type={self.loss_type}, label_smoothing={self.label_smoothing:g}, sft_weight={self.sft_weight:g}"
            + ("" if self.length_normalization else ", length_normalization=False (ablation: summed log-probs)")
        )


def check_flash_attention(model_args: "ModelArguments", model_type: Callable[[], str | None] | None = None) -> None:
    """transformers 5.6.0's FlashAttention-2 fails on the first forward of every model without attention sinks
    (``s_aux.to``, huggingface/transformers#45588; LLaMA-Factory#10610), in the host's stages as in ours: say so
    before the model loads. ``model_type``: reads the model's type from its config, called only when it matters
    (transformers 5.6.0 and ``flash_attn: auto``, which the host turns into FlashAttention-2 for Gemma-2).

    Raises:
        SimPOArgumentError: FlashAttention-2 requested and installed under transformers 5.6.0.
    """
    import transformers

    if transformers.__version__ != "5.6.0":
        return
    requested = str(getattr(model_args, "flash_attn", ""))
    gemma2_auto = requested == "auto" and model_type is not None and model_type() == "gemma2"
    if requested != "fa2" and not gemma2_auto:
        return
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        raise SimPOArgumentError(
            f"`flash_attn: {requested}` (FlashAttention-2{' for Gemma-2' if requested == 'auto' else ''}) fails "
            "under transformers 5.6.0 (its flash_attention_forward calls `s_aux.to` on models without attention "
            "sinks: huggingface/transformers#45588). Install transformers 5.5.4 (`pip install "
            "transformers==5.5.4`, which llamafactory 0.9.5 accepts), or use `flash_attn: sdpa`."
        )


def resolve_simpo_args(
    args: SimPOArguments,
    given_keys: set[str],
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "TrainingArguments",
    finetuning_args: "FinetuningArguments",
) -> SimPOConfig:
    """Apply SimPO's defaults to the host keys the user left unset, and reject combinations that make no sense.

    Raises:
        SimPOArgumentError: naming the offending key and what to change.
    """
    for key in sorted(DPO_ONLY_KEYS.keys() & given_keys):
        raise SimPOArgumentError(
            f"`{key}` is a DPO option and has no meaning under `stage: simpo`; {DPO_ONLY_KEYS[key]}"
        )
    if getattr(finetuning_args, "use_mca", False):
        raise SimPOArgumentError("`use_mca` (Megatron core) is not supported by `stage: simpo`; remove it.")

    check_flash_attention(model_args)

    if "pref_beta" not in given_keys:
        finetuning_args.pref_beta = DEFAULT_BETA
    beta = float(finetuning_args.pref_beta)
    if not beta > 0:
        raise SimPOArgumentError(f"`pref_beta` must be > 0, got {beta}; the paper uses 2.0-10.0.")

    if "simpo_gamma" in given_keys and args.simpo_gamma_beta_ratio is not None:
        raise SimPOArgumentError(
            "Give either `simpo_gamma` (absolute margin) or `simpo_gamma_beta_ratio` (gamma/beta), not both; "
            f"got simpo_gamma={finetuning_args.simpo_gamma} and simpo_gamma_beta_ratio={args.simpo_gamma_beta_ratio}."
        )
    if "simpo_gamma" in given_keys:
        gamma = float(finetuning_args.simpo_gamma)
        if gamma < 0:
            raise SimPOArgumentError(f"`simpo_gamma` must be >= 0, got {gamma}.")
    else:
        ratio = DEFAULT_GAMMA_BETA_RATIO if args.simpo_gamma_beta_ratio is None else args.simpo_gamma_beta_ratio
        gamma = ratio * beta
        finetuning_args.simpo_gamma = gamma  # keep the host's field truthful for reporters and saved configs

    sft_weight = float(finetuning_args.pref_ftx)
    if sft_weight < 0:
        raise SimPOArgumentError(f"`pref_ftx` (SFT weight) must be >= 0, got {sft_weight}.")

    if "logging_nan_inf_filter" not in given_keys:  # the stage's default (stage.py's host_defaults says why)
        training_args.logging_nan_inf_filter = False

    if data_args.max_samples is not None and data_args.max_samples < 1:
        raise SimPOArgumentError(
            f"`max_samples: {data_args.max_samples}` leaves no rows to train on; remove it or give a count >= 1."
        )
    from ..data import resolve_dataset_dir

    names = list(data_args.dataset or []) + list(data_args.eval_dataset or [])
    bundled = resolve_dataset_dir(names, data_args.dataset_dir)
    if bundled != data_args.dataset_dir:
        _logger().info_rank0(f"Datasets {', '.join(names)}: the plugin's bundled {bundled}")
        data_args.dataset_dir = bundled

    if training_args.do_train:
        from .checkpoints import resolve_resume  # the host's modules load only with the host

        resolve_resume(training_args, given="resume_from_checkpoint" in given_keys)

    stage_keys = {
        f.name: getattr(args, f"simpo_{f.name}") for f in fields(SimPOConfig) if hasattr(args, f"simpo_{f.name}")
    }
    packing = ("attention_route", "prefix_sharing", "padding_free")
    if getattr(model_args, "use_unsloth", False) and any(stage_keys.get(key) for key in packing):
        _logger().warning_rank0(
            "simpo-plugin: `use_unsloth` replaces the model's attention outside transformers' attention interface, "
            "so packed rows and shared prompts would not be attended exactly; using the host's padded rows "
            "(`simpo_attention_route`, `simpo_prefix_sharing` and `simpo_padding_free` off)."
        )
        stage_keys |= dict.fromkeys(packing, False)
    return SimPOConfig(beta=beta, gamma=gamma, sft_weight=sft_weight, **stage_keys)  # each `simpo_<x>` key -> `x`
