"""Batch layouts for the SimPO forward: the collator's padded rows, or packed rows that share each prompt.

The host's pairwise collator gives ``2B`` padded rows, chosen rows first, each ``[prompt][response][pad]``.
A :class:`PairLayout` says which tokens the model computes and which hidden state predicts each response token,
so the same log-prob code serves every layout:

- ``padded``: the collator's rows unchanged (the reference).
- ``shared``: one row per pair, ``[prompt][chosen][rejected]``. The prompt is computed once; rejected tokens
  may attend to the prompt but not to the chosen tokens, and their position ids restart after the prompt, so
  each response sees exactly the context it has in its own padded row. The first rejected token is predicted
  by the last prompt token, like the first chosen token.
- ``packed`` (padding-free): all sequences of the batch in a single row with a block-diagonal causal mask and
  position ids that restart per sequence; combined with sharing, a pair is one block.

Attention masks for packed rows are 4D boolean "may attend" masks (R, 1, L, L) that transformers passes to
``sdpa`` as is; ``eager`` needs them additive (:func:`additive_mask`). Padding positions attend to themselves
only, which keeps their softmax finite; their outputs are never read.
"""

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .attention import Segment, Segments, placeholder_mask
from .windows import LayerWindows


IGNORE_INDEX = -100
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "labels"})  # a text-only pairwise batch


class EmptyResponseError(ValueError):
    """A sequence of the batch has no response token: its mean log-prob is undefined."""


_PROMPT, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, 3


@dataclass
class PairLayout:
    """What the model computes for one batch of ``num_pairs`` preference pairs."""

    input_ids: Tensor  # (R, L)
    # (R, L) padding mask; (R, 1, L, L) bool "may attend", or one per layer type (a dict); None (varlen)
    attention_mask: Tensor | dict[str, Tensor] | None
    position_ids: Tensor | None  # (R, L); None lets the model derive them from a 2D mask
    predictors: Tensor  # (N,) flat index into R*L of the hidden state that predicts each response token
    targets: Tensor  # (N,) the response tokens
    sequence_ids: Tensor  # (N,) pair i's chosen response -> i, its rejected response -> num_pairs + i
    num_pairs: int
    sequence_lengths: Tensor  # (2B,) response tokens per sequence, chosen first
    segments: Segments | None = None  # the block route's description of a packed row's attention
    # flash-attention's sequence boundaries of a packed row (``cu_seq_lens_q/k``, ``max_length_q/k``): forward
    # kwargs computed once per batch, so no layer derives them from position ids (a host sync per layer)
    varlen_kwargs: dict[str, Tensor | int] | None = None
    empty_responses: int | None = None  # sequences without a response token; None: not counted (it takes a sync)
    plan: "LayoutPlan | None" = None  # what built it

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    def lengths(self) -> Tensor:
        """(2B,) response lengths in tokens, chosen first."""
        return self.sequence_lengths

    def _map(self, move: Any) -> "PairLayout":
        changes: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Tensor):
                changes[item.name] = move(value)
            elif isinstance(value, dict):
                changes[item.name] = {k: move(v) if isinstance(v, Tensor) else v for k, v in value.items()}
            elif isinstance(value, Segments):
                changes[item.name] = value.moved(move)
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PairLayout":
        """The layout on ``device``; copies from the CPU never block the host (the collator builds on the CPU, and
        the DataLoader pins what it builds). accelerate's ``send_to_device`` and the trainer call this."""

        def move(tensor: Tensor) -> Tensor:
            return tensor.to(device, non_blocking=non_blocking or tensor.device.type == "cpu")

        return self._map(move)

    def pin_memory(self) -> "PairLayout":
        """Page-locked copies of the tensors, for asynchronous copies to the GPU (the DataLoader's ``pin_memory``)."""
        return self._map(lambda tensor: tensor.pin_memory())


@dataclass(frozen=True)
class LayoutPlan:
    """How batches become a :class:`PairLayout`, decided once per model (:meth:`SequenceLogps.plan`).

    Picklable, so the collator, in the DataLoader's workers, builds each batch's layout on the CPU, where the
    Python work of packing costs no GPU time and reading the token ids is no host sync.
    """

    packed: bool = False  # False: the collator's padded rows
    share_prompt: bool = False
    one_row: bool = False
    segments: bool = False  # the block route's segments instead of masks
    varlen: bool = False  # flash-attention's sequence boundaries instead of masks
    windows: LayerWindows | None = None
    varlen_index: bool = False  # the segments' flash-attention index too (the route on flash-attention)

    def build(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> PairLayout:
        """The layout of one collated batch, on the batch's device; counts empty responses when that is the CPU."""
        if not self.packed:
            layout = padded_layout(input_ids, attention_mask, labels)
        else:
            layout = packed_layout(input_ids, attention_mask, labels, share_prompt=self.share_prompt,
                                   one_row=self.one_row, segments=self.segments, windows=self.windows,
                                   varlen=self.varlen)  # fmt: skip
            if self.varlen_index:
                layout.segments.varlen(input_ids.device)
        if input_ids.device.type == "cpu":
            layout.empty_responses = int((layout.lengths() == 0).sum())
        layout.plan = self
        return layout


def padded_layout(input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> PairLayout:
    """The collator's rows as they are: hidden state t predicts label t + 1."""
    rows, length = labels.shape
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    row_ids, cols = keep.nonzero(as_tuple=True)
    return PairLayout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=None,
        predictors=row_ids * length + cols,
        targets=shifted[keep],
        sequence_ids=row_ids,
        num_pairs=rows // 2,
        sequence_lengths=keep.sum(dim=1),
    )


def _split_row(ids: list[int], mask: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt tokens, response tokens) of one collated row, whatever the padding side."""
    tokens = [t for t, m in zip(ids, mask, strict=True) if m]
    row_labels = [lab for lab, m in zip(labels, mask, strict=True) if m]
    start = next((i for i, lab in enumerate(row_labels) if lab != IGNORE_INDEX), len(tokens))
    return tokens[:start], tokens[start:]


def packed_layout(
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    share_prompt: bool = True,
    one_row: bool = False,
    segments: bool = False,
    windows: LayerWindows | None = None,
    varlen: bool = False,
) -> PairLayout:
    """Pack the batch; see the module docstring. Pairs whose two prompts differ are never shared.

    With ``segments`` (one row only) the attention is described by :class:`Segments` for the block route
    instead of a dense (L x L) mask. ``windows``: the model's sliding windows, applied to the dense masks on
    position ids (the route applies them per layer itself). ``varlen`` (one row, unshared): no mask at all, the
    sequence boundaries as flash-attention's ``cu_seq_lens`` kwargs instead.
    """
    num_pairs = input_ids.shape[0] // 2
    rows = [_split_row(*row) for row in zip(input_ids.tolist(), attention_mask.tolist(), labels.tolist(), strict=True)]

    pairs = []  # per pair, its blocks: (tokens, position ids, kinds, [(predictor offsets, response, sequence id)])
    for i in range(num_pairs):
        (prompt_c, chosen), (prompt_r, rejected) = rows[i], rows[num_pairs + i]
        if share_prompt and prompt_c and prompt_c == prompt_r:
            p, c, r = len(prompt_c), len(chosen), len(rejected)
            tokens = prompt_c + chosen + rejected
            positions = list(range(p + c)) + list(range(p, p + r))
            kinds = [_PROMPT] * p + [_CHOSEN] * c + [_REJECTED] * r
            chosen_pred = list(range(p - 1, p + c - 1))
            rejected_pred = [p - 1] + list(range(p + c, p + c + r - 1))
            responses = [(chosen_pred, chosen, i), (rejected_pred, rejected, num_pairs + i)]
            pairs.append([(tokens, positions, kinds, responses)])
        else:
            pairs.append([_sequence_block(prompt_c, chosen, i), _sequence_block(prompt_r, rejected, num_pairs + i)])

    row_groups = [[block for blocks in pairs for block in blocks]] if one_row else pairs
    if varlen and (share_prompt or not one_row):
        raise ValueError("varlen layouts are one row of unshared sequences")
    return _assemble(
        row_groups, num_pairs, input_ids.device, segments=segments and one_row, windows=windows, varlen=varlen
    )


def _sequence_block(prompt: list[int], response: list[int], sequence_id: int) -> tuple:
    """An unshared ``[prompt][response]`` block with its own position ids.

    As in the padded rows, a response token at position 0 (empty prompt) has no predictor and is not scored.
    """
    tokens = prompt + response
    kinds = [_PROMPT] * len(prompt) + [_CHOSEN] * len(response)
    start = max(len(prompt), 1)
    return (
        tokens,
        list(range(len(tokens))),
        kinds,
        [(list(range(start - 1, len(tokens) - 1)), tokens[start:], sequence_id)],
    )


def _block_segments(block: tuple, offset: int) -> list[Segment]:
    """A shared block gives ``[prompt][chosen]`` (causal) and ``[rejected]`` (keys: prompt + itself); else one."""
    tokens, _, kind, _ = block
    n = len(tokens)
    p, c = kind.count(_PROMPT), kind.count(_CHOSEN)
    spans = [((0, p + c), ((0, p + c),)), ((p + c, n), ((0, p), (p + c, n)))] if _REJECTED in kind else [
        ((0, n), ((0, n),))
    ]  # fmt: skip
    return [
        Segment(start=offset + start, end=offset + end, key_ranges=tuple((offset + a, offset + b) for a, b in ranges))
        for (start, end), ranges in spans
        if end > start
    ]


def _assemble(
    row_groups: list[list[tuple]],
    num_pairs: int,
    device: torch.device,
    segments: bool = False,
    windows: LayerWindows | None = None,
    varlen: bool = False,
) -> PairLayout:
    """Lay blocks out in rows (right-padded to the longest row) and build the mask (or segments) and indices."""
    length = max(sum(len(block[0]) for block in group) for group in row_groups)
    num_rows = len(row_groups)
    ids = torch.zeros(num_rows, length, dtype=torch.long)
    positions = torch.zeros(num_rows, length, dtype=torch.long)
    kinds = torch.full((num_rows, length), _PAD, dtype=torch.long)
    docs = torch.full((num_rows, length), -1, dtype=torch.long)
    predictors, targets, sequence_ids = [], [], []
    lengths = [0] * (2 * num_pairs)
    row_segments: list[Segment] = []
    doc = 0
    for r, group in enumerate(row_groups):
        offset = 0
        for block in group:
            tokens, pos, kind, responses = block
            n = len(tokens)
            if segments:
                row_segments += _block_segments(block, offset)
            ids[r, offset : offset + n] = torch.tensor(tokens)
            positions[r, offset : offset + n] = torch.tensor(pos)
            kinds[r, offset : offset + n] = torch.tensor(kind)
            docs[r, offset : offset + n] = doc
            for pred, response, seq in responses:
                predictors += [r * length + offset + j for j in pred]
                targets += response
                sequence_ids += [seq] * len(response)
                lengths[seq] += len(response)
            offset += n
            doc += 1
        positions[r, offset:] = torch.arange(length - offset)

    indices = {
        "input_ids": ids.to(device),
        "position_ids": positions.to(device),
        "predictors": torch.tensor(predictors, dtype=torch.long, device=device),
        "targets": torch.tensor(targets, dtype=torch.long, device=device),
        "sequence_ids": torch.tensor(sequence_ids, dtype=torch.long, device=device),
        "num_pairs": num_pairs,
        "sequence_lengths": torch.tensor(lengths, dtype=torch.long, device=device),
    }
    if segments:  # one row that the blocks tile exactly: no padding, no mask
        return PairLayout(attention_mask=placeholder_mask(device), segments=Segments(row_segments), **indices)
    if varlen:  # one row of whole blocks: each block is a sequence
        ends = torch.tensor([len(block[0]) for block in row_groups[0]]).cumsum(0)
        cu_seqlens = torch.cat([ends.new_zeros(1), ends]).to(device=device, dtype=torch.int32)
        longest = max(len(block[0]) for block in row_groups[0])
        bounds = {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest,
                  "max_length_k": longest}  # fmt: skip
        return PairLayout(attention_mask=None, varlen_kwargs=bounds, **indices)
    q = torch.arange(length)
    causal = q[None, :] <= q[:, None]
    same_doc = (docs[:, :, None] == docs[:, None, :]) & (docs[:, :, None] >= 0)
    blocked = (kinds[:, :, None] == _REJECTED) & (kinds[:, None, :] == _CHOSEN)
    allowed = causal & same_doc & ~blocked
    eye = torch.eye(length, dtype=torch.bool)  # padding rows attend to themselves only
    mask = (allowed | eye)[:, None].to(device)
    if windows is not None and windows.window is not None:
        distance = positions[:, :, None] - positions[:, None, :]
        windowed = ((allowed & (distance < windows.window)) | eye)[:, None].to(device)
        mask = {"full_attention": mask, "sliding_attention": windowed} if windows.mixed else windowed
    return PairLayout(attention_mask=mask, **indices)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean 4D "may attend" mask as the additive float mask that ``eager`` attention expects."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
