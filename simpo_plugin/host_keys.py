"""The host's config keys across LLaMA-Factory versions, and the values its parser takes without a check.

``RENAMED`` and ``REMOVED`` list keys that older llamafactory versions took (found by comparing the hparams
dataclasses of every release tag from 0.8.3 to 0.9.5; a name the installed host takes again, as transformers'
``use_cache``, is left out). They are consulted before any spelling match: the closest
spelling of an old key can be a different key that is accepted and does something else (``new_special_tokens``
is closest to ``init_special_tokens``, which adds no token; the key is ``add_special_tokens``).

:func:`check_values` covers the host's ``HfArgumentParser.parse_dict``, which hands a YAML value to the dataclass as
it is: ``max_samples: "12,4"`` or ``max_samples: [12, 4]`` ends in a raw ``TypeError`` far from the config, and
``do_train: "false"`` is a true string. Standard library only: the host glue and the commands both call it.
"""

import math
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import SimPOArgumentError


# old key: (new key, the llamafactory version that renamed it, what else to know)
RENAMED: dict[str, tuple[str, str, str]] = {
    "new_special_tokens": ("add_special_tokens", "0.9.3", " (the same comma-separated tokens; `init_special_tokens` "
                           "is another key: how new tokens' embeddings start, and it adds no token)"),
    "image_dir": ("media_dir", "0.9.2", " (the folder of images, videos and audios)"),
    "image_resolution": ("image_max_pixels", "0.9.2", " (a pixel count, as before)"),
    "video_resolution": ("video_max_pixels", "0.9.2", " (a pixel count, as before)"),
}  # fmt: skip
_RAY = (
    "Ray training now starts `ray_num_workers` workers with ray.remote, which save to `output_dir` like any run "
    "(`ray_init_kwargs` for ray.init, `master_addr`/`master_port` for the process group); delete the key"
)
_KT = (
    "KTransformers fine-tuning now runs through Accelerate: `use_kt: true` with `kt_weight_path` (pre-quantized "
    "expert weights); delete the key"
)
# old key: (the llamafactory version that removed it, what replaces it)
REMOVED: dict[str, tuple[str, str]] = {
    "visual_inputs": ("0.9.0", "a multimodal model is recognised from its config; delete the key"),
    "train_mm_proj_only": ("0.9.2", "to train only the multimodal projector set `freeze_language_model: true` and "
                           "`freeze_multi_modal_projector: false` (the vision tower stays frozen by default)"),
    **dict.fromkeys(("ray_run_name", "ray_storage_path", "ray_storage_filesystem", "resources_per_worker",
                     "placement_strategy"), ("0.9.5", _RAY)),
    **dict.fromkeys(("kt_optimize_rule", "cpu_infer", "chunk_size", "mode", "kt_maxlen", "kt_use_cuda_graph",
                     "kt_force_think"), ("0.9.5", _KT)),
}  # fmt: skip


def moved_key(key: str) -> str | None:
    """What became of a key an older llamafactory took, as a clause without a final period, or None."""
    if key in RENAMED:
        new, version, note = RENAMED[key]
        return f"`{key}` was renamed `{new}` in llamafactory {version}; write `{new}` instead{note}"
    if key in REMOVED:
        version, instead = REMOVED[key]
        return f"`{key}` was removed in llamafactory {version}; {instead}"
    return None


def _scalar_kind(annotation: Any) -> str | None:
    """``bool``, ``int`` or ``float`` for a field of one such type (optional or not), else None (not checked)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    kinds = {member for member in members if member is not type(None)}
    if kinds == {bool}:
        return "bool"
    if kinds == {int}:
        return "int"
    if kinds in ({float}, {int, float}):
        return "float"
    return None


def scalar_fields(classes: list[type]) -> dict[str, str]:
    """``{key: kind}`` of the classes' bool, int and float fields."""
    found: dict[str, str] = {}
    for cls in classes:
        try:
            hints = get_type_hints(cls)
        except Exception:  # noqa: BLE001 - a host class whose annotations cannot be resolved is left unchecked
            continue
        for name in getattr(cls, "__dataclass_fields__", {}):
            kind = _scalar_kind(hints.get(name))
            if kind is not None:
                found.setdefault(name, kind)
    return found


WANTED = {"bool": "true or false", "int": "an integer", "float": "a number"}


def _from_text(value: str, kind: str) -> Any:
    """A quoted value read as ``kind`` (``"1e-5"`` -> 1e-05, ``"12"`` -> 12, ``"false"`` -> False), else None."""
    text = value.strip()
    if kind == "bool":
        return {"true": True, "false": False}.get(text.lower())
    try:
        number = int(text) if kind == "int" else float(text)
    except ValueError:
        return None
    return number if kind == "int" or math.isfinite(number) else None


def check_values(raw: dict[str, Any], classes: list[type], error: type[Exception] = SimPOArgumentError) -> None:
    """Check the bool, int and float keys of ``raw`` against the host's ``classes``; a quoted value that reads as
    the key's type is replaced by it in ``raw`` (the host would pass the text on).

    Raises:
        ``error``: one line naming the key, what it takes and the value given.
    """
    kinds = scalar_fields(classes)
    for key, value in list(raw.items()):
        kind = kinds.get(key)
        if kind is None or value is None:
            continue
        if isinstance(value, str):
            read = _from_text(value, kind)
            if read is not None:
                raw[key] = read
                continue
        elif kind == "bool" and isinstance(value, bool):
            continue
        elif kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            continue
        elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            continue
        if isinstance(value, (list, tuple, dict)):
            what = "a list" if isinstance(value, (list, tuple)) else "a mapping"
            raise error(f"`{key}` takes one value, {WANTED[kind]}, got {what}: {value!r}.")
        raise error(f"`{key}` must be {WANTED[kind]}, got {value!r}.")
