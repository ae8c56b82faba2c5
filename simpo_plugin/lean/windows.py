"""Which attention layers of a model look back over a sliding window, and how far.

transformers lets a query at index q see a key at index k when ``q - window < k <= q`` (``sliding_window_overlay``
in ``masking_utils``). A model says which layers slide in one of two ways:

- ``config.layer_types``, a list of ``"full_attention"`` / ``"sliding_attention"`` (Gemma-2, Gemma-3, Qwen2 with
  ``use_sliding_window``, Qwen3); such models take a prepared mask per layer type, as a dict;
- ``config.sliding_window`` alone (Mistral, Phi-3): every layer slides, and one prepared mask serves them all.

The packed layouts measure the distance ``q - k`` on position ids, which restart per sequence, so each response
sees the window its own padded row gives it.
"""

from dataclasses import dataclass


KNOWN_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


class UnsupportedLayerTypes(ValueError):
    """The model has attention layers (chunked, linear, ...) whose masks the packed layouts do not build."""


@dataclass(frozen=True)
class LayerWindows:
    """``window``: tokens a query sees, itself included (None: no layer slides). ``mixed``: some layers are full,
    so masks go to the model per layer type (``{"full_attention": ..., "sliding_attention": ...}``)."""

    window: int | None = None
    mixed: bool = False


def layer_windows(config: object) -> LayerWindows:
    """The sliding windows of ``config``'s layers.

    Raises:
        UnsupportedLayerTypes: ``config.layer_types`` names a kind of layer other than full or sliding attention.
    """
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        unknown = set(types) - KNOWN_LAYER_TYPES
        if unknown:
            raise UnsupportedLayerTypes(f"layer types {sorted(unknown)}")
        if "sliding_attention" not in types:
            return LayerWindows()
        if window is None:
            raise UnsupportedLayerTypes("sliding_attention layers without a `sliding_window`")
        return LayerWindows(int(window), mixed="full_attention" in types)
    return LayerWindows(None if window is None else int(window))
