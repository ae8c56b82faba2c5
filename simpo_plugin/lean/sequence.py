"""Chooses, once per model, how a batch becomes per-sequence log-probs: layout, attention route and head path."""

import logging

import torch
from torch import Tensor, nn

from ..ranks import agreed
from .attention import ROUTES, install_route, route_available
from .config import LeanConfig, chunk_size_for
from .head import (
    HeadNotCalledError,
    lean_token_logps,
    model_inputs,
    plain_token_logps,
    sequence_sums,
)
from .holding import sharded_by_fsdp
from .layout import TEXT_KEYS, EmptyResponseError, LayoutPlan, PairLayout
from .windows import UnsupportedLayerTypes, layer_windows


logger = logging.getLogger("llamafactory.simpo")
MASK_ATTENTION = ("sdpa", "eager")  # take a 4D "may attend" mask, so prompts can be shared
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")  # packed rows from position ids, no mask
LEAN_CHECK_TOKENS = 256  # response tokens the one-time check scores through the model's own logits
LEAN_CHECK_MEAN_ATOL = 1e-2  # a head the lean path misses (a logit scale) moves every token; rounding moves few


def base_attention(config: object) -> str | None:
    """The model's attention implementation, seen through the route it may have been pointed at."""
    current = getattr(config, "_attn_implementation", None)
    return {route: base for base, route in ROUTES.items()}.get(current, current)


class SequenceLogps:
    """Callable ``(model, unwrapped_model, batch) -> (sums (2B,), lengths (2B,))`` following ``config``."""

    def __init__(self, config: LeanConfig) -> None:
        self.config = config
        self.lean = config.lean_logps
        self.route = config.attention_route
        self.packed = True  # False once a model showed it cannot take packed rows: the host's padded rows
        self._sinks_checked = False
        self._lean_checked = False
        self._warned: set[str] = set()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(f"simpo-plugin: {message}")

    def plan(self, attn_implementation: str | None, model: nn.Module | None = None) -> LayoutPlan:
        """How this model's batches are laid out, for ``attn_implementation`` (the base one); ``model`` is the
        unwrapped model. Warns once for each reason it falls back to the padded rows. The trainer asks once before
        training, so the collator can build each batch's layout on the CPU (:meth:`LayoutPlan.build`)."""
        share, one_row = self.config.prefix_sharing, self.config.padding_free
        padded = LayoutPlan()
        if not (share or one_row or self.route) or not self.packed:
            return padded
        if model is not None and not self._sinks_checked:  # once: the model's modules do not change
            self._sinks_checked = True
            if has_attention_sinks(model):
                self.packed = False
                self._warn_once(
                    f"{type(model).__name__} has attention sinks, which the packed layouts do not model; using "
                    "padded rows"
                )
                return padded
        if attn_implementation not in MASK_ATTENTION + VARLEN_ATTENTION:
            self._warn_once(
                f"prefix sharing / padding-free need sdpa, eager or flash-attention, not {attn_implementation}; "
                "using padded rows"
            )
            return padded
        try:
            windows = layer_windows(model.config) if model is not None else None
        except UnsupportedLayerTypes as exc:
            self._warn_once(f"prefix sharing / padding-free cannot lay out {exc}; using padded rows")
            return padded
        flash = attn_implementation in VARLEN_ATTENTION
        if self.route and model is not None and route_available(model):
            return LayoutPlan(packed=True, share_prompt=share, one_row=True, segments=True, varlen_index=flash)
        if flash:  # no 4D masks: packed through sequence boundaries only
            if not one_row:
                return padded
            if share:
                self._warn_once(
                    f"prefix sharing under {attn_implementation} needs the block route (`simpo_attention_route: "
                    "true`, flash-attn >= 2.1); packing without sharing"
                )
            return LayoutPlan(packed=True, one_row=True, varlen=True)
        if not (share or one_row):
            return padded
        return LayoutPlan(packed=True, share_prompt=share, one_row=one_row, windows=windows)

    def plan_for(self, model: nn.Module) -> LayoutPlan:
        """:meth:`plan` for the unwrapped ``model`` and its attention implementation."""
        return self.plan(base_attention(model.config), model)

    def layout(
        self,
        batch: dict[str, Tensor],
        attn_implementation: str | None,
        model: nn.Module | None = None,
        prepared: PairLayout | None = None,
    ) -> PairLayout:
        """The batch's layout for ``attn_implementation`` (the base one; ``model`` receives the route if used).

        ``prepared``: the layout the collator built on the CPU, used (moved to the batch's device) when it follows
        this step's plan; otherwise the layout is built here, from the device batch (host syncs on a GPU).
        """
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        plan = self.plan(attn_implementation, model)
        if plan.packed and set(batch) - TEXT_KEYS:
            self._warn_once("prefix sharing / padding-free need text-only batches; using padded rows")
            plan = LayoutPlan()
        if plan.segments:
            install_route(model)
        if prepared is not None and prepared.plan == plan and prepared.num_pairs == ids.shape[0] // 2:
            return prepared if prepared.input_ids.device == ids.device else prepared.to(ids.device)
        return plan.build(ids, mask, labels)

    def __call__(
        self, model: nn.Module, unwrapped: nn.Module, batch: dict[str, Tensor], prepared: PairLayout | None = None
    ) -> tuple[Tensor, Tensor]:
        """(2B,) summed response log-probs and (2B,) response lengths, chosen first.

        Raises:
            EmptyResponseError: a sequence has no response token (counted on the CPU when the collator built the
                layout; otherwise with one host sync).
        """
        attn = base_attention(unwrapped.config)
        layout = self.layout(batch, attn, unwrapped, prepared)
        empty = layout.empty_responses
        if empty is None:
            empty = int((layout.lengths() == 0).sum())
        if empty:
            raise EmptyResponseError(f"{empty} sequence(s) of the batch have no response token")
        result = self._sums(model, unwrapped, batch, layout, attn)
        layers = getattr(unwrapped.config, "num_hidden_layers", None) or 1
        if layout.segments is not None and layout.segments.calls < layers:  # a layer's attention bypassed the route
            self.route, self.packed = False, False
            self._warn_once(
                f"the attention of {type(unwrapped).__name__} does not go through transformers' attention interface "
                "(remote code, or a patched attention), so it may ignore a packed row's masks and position ids; "
                "using padded rows"
            )
            layout = self.layout(batch, attn, unwrapped)
            result = self._sums(model, unwrapped, batch, layout, attn)
        return result

    def _sums(
        self, model: nn.Module, unwrapped: nn.Module, batch: dict[str, Tensor], layout: PairLayout, attn: str | None
    ) -> tuple[Tensor, Tensor]:
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
        inputs = model_inputs(layout, attn, unwrapped.dtype) | extra
        if self.lean:
            token_logps = self._lean(model, unwrapped, inputs, layout)
            if token_logps is not None:
                return sequence_sums(token_logps, layout)
        return sequence_sums(plain_token_logps(model, inputs, layout), layout)

    def chunk_size(self, layout: PairLayout) -> int:
        """``logps_chunk_size``, or the default of the batch's device (:data:`~.config.CHUNK_SIZE_BY_DEVICE`)."""
        return self.config.logps_chunk_size or chunk_size_for(layout.input_ids.device.type)

    def _lean(self, model: nn.Module, unwrapped: nn.Module, inputs: dict, layout: PairLayout) -> Tensor | None:
        head = unwrapped.get_output_embeddings()
        if head is not None and sharded_by_fsdp(model, head):
            self.lean = False
            self._warn_once("FSDP shards the LM head, which the lean head cannot gather in backward; plain log-probs")
            return None
        softcap = getattr(unwrapped.config, "final_logit_softcapping", None)
        check = None if self._lean_checked else check_sample(layout)
        try:
            token_logps, checked = lean_token_logps(
                model, head, inputs, layout, softcap, self.chunk_size(layout), check=check
            )
        except HeadNotCalledError as exc:
            self.lean = False
            self._warn_once(f"cannot split {type(unwrapped).__name__} into body and head ({exc}); plain log-probs")
            return None
        if check is None:
            return token_logps
        self._lean_checked = True
        if checked is None:  # the forward reshapes the head's output: compare with its full logits
            with torch.no_grad():
                checked = plain_token_logps(model, inputs, layout)[check]
        difference = (token_logps.detach()[check] - checked).abs()
        agrees = difference.numel() == 0 or bool(difference.mean() <= LEAN_CHECK_MEAN_ATOL)
        if agreed(agrees, difference.device):
            return token_logps
        self.lean = False
        if not agrees:
            self._warn_once(
                f"lean log-probs of {type(unwrapped).__name__} differ from its logits by "
                f"{difference.mean().item():.3g} on average (max {difference.max().item():.3g}; a head the lean "
                "path does not model); using plain log-probs"
            )
        else:
            self._warn_once("the lean log-probs disagree with the logits on another rank; using plain log-probs")
        return None


def has_attention_sinks(model: nn.Module) -> bool:
    """Whether an attention layer of ``model`` carries learned sinks (gpt-oss's ``sinks``)."""
    if not isinstance(model, nn.Module):  # a config holder (benchmarks lay out batches without a model)
        return False
    return any(isinstance(getattr(module, "sinks", None), Tensor) for module in model.modules())


def check_sample(layout: PairLayout) -> Tensor:
    """(K,) indices of up to ``LEAN_CHECK_TOKENS`` response tokens, evenly spread, for the one-time lean check."""
    count, device = layout.targets.numel(), layout.targets.device
    return torch.linspace(0, max(count - 1, 0), min(LEAN_CHECK_TOKENS, count), device=device).round().long()
