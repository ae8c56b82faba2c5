"""The keys of ``simpo-plugin rounds``: a few of its own, and three blocks that are the three commands' configs.

Top level: ``model_name_or_path`` (round 0's policy), ``template`` (every block uses it), ``output_dir``,
``rounds``, ``prompts_per_round`` (the size of each round's slice of the ``pairs:`` block's dataset; default: the
dataset's prompts split evenly over the rounds), ``stop_when`` (optional) and ``adapters`` (LoRA only: ``merge``,
the default, or ``stack``).
``pairs:``, ``train:`` and ``eval:`` take exactly the keys of ``simpo-plugin pairs``, of a ``stage: simpo``
training config and of ``simpo-plugin eval``, minus the keys the loop sets itself (:data:`LOOP_SETS`). A key the
loop sets, or one the block's command does not know, is refused with the block's name and the closest key.

Errors: :class:`simpo_plugin.errors.SimPOArgumentError` (one line, exit status 2).
"""

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SimPOArgumentError
from ..host_keys import moved_key


TOP_KEYS = {"model_name_or_path", "template", "output_dir", "rounds", "prompts_per_round", "stop_when", "adapters"}
STOP_KEYS = {"lc_gain_below", "collapse_warning", "check_drop_above"}
ADAPTERS = ("merge", "stack")
# What the loop sets in each block, and why it does.
LOOP_SETS = {
    "pairs": {
        "model_name_or_path": "each round samples from the previous round's policy (round 1: the top-level model)",
        "adapter_name_or_path": "the loop loads each round's policy (merged, or the stacked adapters)",
        "template": "set once, at the top level",
        "output_dir": "each round writes to output_dir/round_<r>/pairs",
        "prompt_slice": "each round takes its own slice of the dataset (`prompts_per_round`)",
        "overwrite_output_dir": "a rerun resumes every phase where it stopped",
        "server_urls": "a running server serves one model, and each round samples from its own policy: give "
        "`server_command`, which each round starts on its policy",
        "num_shards": "the loop runs each round's pairs whole, on its own policy",
        "shard_index": "the loop runs each round's pairs whole, on its own policy",
    },
    "train": {
        "model_name_or_path": "each round trains the previous round's policy (round 1: the top-level model)",
        "adapter_name_or_path": "the loop loads each round's policy (merged, or the stacked adapters)",
        "template": "set once, at the top level",
        "output_dir": "each round writes to output_dir/round_<r>/train",
        "dataset": "each round trains on its own pairs",
        "dataset_dir": "each round trains on its own pairs",
        "stage": "the loop trains `stage: simpo`",
        "do_train": "the loop trains",
        "overwrite_output_dir": "a rerun resumes training from its last checkpoint",
        "resume_from_checkpoint": "a rerun resumes training from its last checkpoint",
        "create_new_adapter": "`adapters: stack` sets it (each round trains a new adapter on the ones before)",
    },
    "eval": {
        "models": "each round compares its policy with the start and with the previous round",
        "baseline": "each round compares against the start (and against the previous round)",
        "model_name_or_path": "the models are the rounds' policies",
        "adapter_name_or_path": "the loop loads each round's policy (merged, or the stacked adapters)",
        "template": "set once, at the top level",
        "output_dir": "each round writes to output_dir/round_<r>/eval",
        "answers_cache": "the rounds share output_dir/answers, so each policy's answers are generated once",
    },
}


@dataclass
class StopWhen:
    """When the loop stops before ``rounds`` (each optional).

    Args:
        lc_gain_below: points; stop when the LC win rate against the previous round minus 50 is below it.
        collapse_warning: stop after a round whose training logged a collapse warning (``warning/*``).
        check_drop_above: points; stop when a capability check's score fell more than this against the start.
    """

    lc_gain_below: float | None = None
    collapse_warning: bool = False
    check_drop_above: float | None = None


@dataclass
class RoundsConfig:
    """A checked ``simpo-plugin rounds`` config (module docstring)."""

    model_name_or_path: str
    template: str
    output_dir: str
    rounds: int
    prompts_per_round: int | None = None
    adapters: str = "merge"
    stop_when: StopWhen = field(default_factory=StopWhen)
    pairs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)

    @property
    def lora(self) -> bool:
        return self.train.get("finetuning_type", "lora") == "lora"

    def saved(self) -> dict[str, Any]:
        """What finished rounds depend on: all but ``stop_when``, and ``rounds`` when ``prompts_per_round`` is set
        (otherwise ``rounds`` decides each round's slice of the prompts)."""
        saved = {"model_name_or_path": self.model_name_or_path, "template": self.template,
                 "prompts_per_round": self.prompts_per_round, "adapters": self.adapters, "pairs": self.pairs,
                 "train": self.train, "eval": self.eval}  # fmt: skip
        if not self.prompts_per_round:
            saved["rounds"] = self.rounds
        return saved


def closest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" Did you mean `{close[0]}`?" if close else ""


def check_block(name: str, block: Any, known: set[str]) -> dict[str, Any]:
    """The block as a dict, every key known to its command and none the loop sets."""
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise SimPOArgumentError(f"`{name}:` must hold `key: value` lines, got a {type(block).__name__}.")
    for key in block:
        if key in LOOP_SETS[name]:
            raise SimPOArgumentError(f"`{name}.{key}` is set by the loop: {LOOP_SETS[name][key]}; remove it.")
        if key not in known:
            moved = moved_key(key)
            if moved:
                raise SimPOArgumentError(f"In the `{name}:` block: {moved}.")
            raise SimPOArgumentError(f"Unknown key `{name}.{key}` for the `{name}:` block.{closest(key, known)}")
    return dict(block)


def check_stack(blocks: dict[str, dict[str, Any]]) -> None:
    """``adapters: stack`` needs LoRA, an unquantized model without ZeRO-3 (the host merges earlier adapters into
    the model in memory only then; otherwise it resumes the last one instead of creating a new one), and pairs
    sampled in this process (a server serves one adapter)."""
    why = ""
    train = blocks["train"]
    if train.get("finetuning_type", "lora") != "lora":
        why = f"it stacks LoRA adapters, and `train.finetuning_type` is {train['finetuning_type']!r}"
    elif train.get("quantization_bit") is not None:
        why = "the host does not merge adapters into a quantized model (it would resume round 1's adapter)"
    elif zero_stage(train.get("deepspeed")) == 3:
        why = "the host does not merge adapters under ZeRO-3 (it would resume round 1's adapter)"
    elif blocks["pairs"].get("backend") == "server" or blocks["pairs"].get("server_command"):
        why = "a server serves one adapter, and a stacked policy is several (use `pairs.backend: hf`)"
    if why:
        raise SimPOArgumentError(f"`adapters: stack` cannot run here: {why}. Use `adapters: merge`.")


def zero_stage(deepspeed: Any) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a JSON file or a dict), None when there is none or it cannot be read."""
    config = deepspeed
    if isinstance(deepspeed, str):
        try:
            config = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    stage = config.get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
    return stage if isinstance(stage, int) else None


def parse_config(raw: dict[str, Any], known: dict[str, set[str]]) -> RoundsConfig:
    """Check ``raw`` (the YAML with overrides applied) against the top keys and each block's command's keys.

    Args:
        raw: the config.
        known: per block (``pairs``, ``train``, ``eval``), the keys its command takes.

    Raises:
        SimPOArgumentError: naming the key (and its block), with the closest known key.
    """
    for key in raw:
        if key not in TOP_KEYS | set(LOOP_SETS):
            where = next((f" It belongs in the `{name}:` block." for name in ("pairs", "train", "eval")
                          if key in known[name] and key not in LOOP_SETS[name]), "")  # fmt: skip
            raise SimPOArgumentError(
                f"Unknown top-level key `{key}` for `simpo-plugin rounds`.{where or closest(key, TOP_KEYS)}"
            )
    for key in ("model_name_or_path", "template", "output_dir", "rounds"):
        if raw.get(key) in (None, ""):
            raise SimPOArgumentError(f"`{key}` is required (docs/rounds.md).")
    rounds = raw["rounds"]
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise SimPOArgumentError(f"`rounds` must be an integer >= 1, got {rounds!r}.")
    per_round = raw.get("prompts_per_round")
    if per_round is not None and (not isinstance(per_round, int) or isinstance(per_round, bool) or per_round < 1):
        raise SimPOArgumentError(f"`prompts_per_round` must be an integer >= 1, got {per_round!r}.")
    if raw.get("adapters", "merge") not in ADAPTERS:
        raise SimPOArgumentError(
            f"`adapters` must be `merge` (each LoRA round is merged into the next round's policy) or `stack` (each "
            f"round trains a new adapter on the ones before), got {raw['adapters']!r}."
        )
    stop = raw.get("stop_when") or {}
    if not isinstance(stop, dict):
        raise SimPOArgumentError(f"`stop_when:` must hold `key: value` lines, got a {type(stop).__name__}.")
    for key in stop:
        if key not in STOP_KEYS:
            raise SimPOArgumentError(f"Unknown key `stop_when.{key}`.{closest(key, STOP_KEYS)}")
    for key in ("lc_gain_below", "check_drop_above"):
        value = stop.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SimPOArgumentError(f"`stop_when.{key}` must be a number of points, got {value!r}.")
    if not isinstance(stop.get("collapse_warning", False), bool):
        raise SimPOArgumentError(
            f"`stop_when.collapse_warning` must be true or false, got {stop['collapse_warning']!r}."
        )
    blocks = {name: check_block(name, raw.get(name), known[name]) for name in ("pairs", "train", "eval")}
    for name, needed in (("pairs", "dataset"), ("eval", "dataset")):
        if not blocks[name].get(needed):
            raise SimPOArgumentError(f"`{name}.{needed}` is required: the prompts {name} reads (docs/rounds.md).")
    stage = blocks["train"].get("finetuning_type", "lora")
    if stage not in ("full", "freeze", "lora"):
        raise SimPOArgumentError(f"`train.finetuning_type` must be full, freeze or lora, got {stage!r}.")
    if raw.get("adapters") == "stack":
        check_stack(blocks)
    return RoundsConfig(
        model_name_or_path=str(raw["model_name_or_path"]), template=str(raw["template"]),
        output_dir=str(raw["output_dir"]), rounds=rounds, prompts_per_round=per_round,
        adapters=raw.get("adapters", "merge"), stop_when=StopWhen(**stop), **blocks,
    )  # fmt: skip
