"""Generation side of the recipe: on-policy pairs (sample, score, select) with the host's loaders and templates.

The rest of the plugin calls :func:`build_pairs` (``simpo-plugin pairs``), :func:`evaluate_models`
(``simpo-plugin eval``) and the training probe of :mod:`.probes`; the modules below them each hold one piece:
``args`` (keys), ``prompts`` (reading and rendering), ``sampling`` (backends), ``scorers`` (reward model, host
reward model, function), ``metrics`` (text health), ``selection`` (the pair rules), ``store`` (resumable
parts), ``outputs`` (the dataset files), ``report`` and ``eval_report``. Importing this package is cheap;
torch and the host load with the submodules.
"""

from typing import Any


def build_pairs(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.generation.pairs.build_pairs`."""
    from .pairs import build_pairs as run

    return run(raw)


def evaluate_models(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.generation.evaluate.evaluate_models`."""
    from .evaluate import evaluate_models as run

    return run(raw)


__all__ = ["build_pairs", "evaluate_models"]
