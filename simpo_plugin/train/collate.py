"""The host's pairwise collator, with each batch's SimPO layout built beside it on the CPU.

Packing a batch (which tokens form a prompt, where each response starts, the segments and indices of
:class:`~simpo_plugin.lean.layout.PairLayout`) reads every token id. Done in the training step, on the GPU's batch,
that is a host sync and milliseconds of Python while the GPU waits. Done here, it runs where the host's collator
runs (in the DataLoader's workers with ``dataloader_num_workers``), on CPU tensors, ahead of the step; the
DataLoader pins the layout and the step copies it to the GPU without blocking.
"""

from typing import Any


LAYOUT_KEY = "simpo_layout"  # the batch key of the prepared layout; the trainer takes it out before the forward


class LayoutCollator:
    """Calls ``collator`` and, once the trainer has set :attr:`plan`, adds the batch's layout under ``LAYOUT_KEY``.

    Only text-only pairwise batches get one (the keys ``input_ids``, ``attention_mask``, ``labels``); the step
    builds the layout itself for anything else, and whenever a prepared layout does not follow its plan.
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.plan: Any = None  # a lean LayoutPlan: picklable, so it reaches the DataLoader's workers

    def __getattr__(self, name: str) -> Any:  # the host's collator's attributes (template, tokenizer, ...)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        from ..lean import TEXT_KEYS

        batch = self.collator(features)
        if self.plan is not None and set(batch) == TEXT_KEYS:
            batch[LAYOUT_KEY] = self.plan.build(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return batch
