"""The keys of ``simpo-plugin pairs``: the shared generation keys plus selection, output naming and sharding.

Errors: :class:`simpo_plugin.errors.PairsConfigError`, naming the key (docs/onpolicy.md lists every key).
"""

import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..sampling import GenerationArguments, parse_args
from .selection import DROP_TRUNCATED


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments


@dataclass
class PairsArguments(GenerationArguments):
    """Keys of ``simpo-plugin pairs``: the shared ones plus selection, output naming and sharding."""

    command: ClassVar[str] = "pairs"

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Discard earlier partial results in `output_dir` instead of resuming."}
    )
    min_score_gap: float = field(
        default=0.0, metadata={"help": "Drop a prompt whose best and worst scores differ by less (ties always drop)."}
    )
    drop_truncated: str = field(
        default="chosen",
        metadata={
            "help": "Which truncated side drops a pair: `chosen` (default) drops a pair only when the chosen answer "
            "was cut off at `max_new_tokens`, keeping pairs whose rejected answer rambled past the budget; `both` "
            "drops when either was; `none` keeps all."
        },
    )
    keep_truncated: bool | None = field(
        default=None,
        metadata={"help": "Deprecated: `true` is `drop_truncated: none`, `false` is `drop_truncated: both`."},
    )
    dataset_name: str = field(default="onpolicy", metadata={"help": "Name of the output's dataset_info.json entry."})
    num_shards: int = field(default=1, metadata={"help": "Split the prompts over this many machines or runs."})
    shard_index: int = field(default=0, metadata={"help": "The shard this run takes, 0 <= shard_index < num_shards."})
    prompt_slice: str | None = field(
        default=None,
        metadata={
            "help": "Only these prompts (after deduplication, in dataset order): `START:STOP` (from 0, STOP "
            "excluded) or `K/N` (the K-th of N equal parts, from 1). `simpo-plugin rounds` gives each round its own."
        },
    )

    def validation(self) -> list[tuple[bool, str]]:
        return super().validation() + [
            (self.num_samples >= 2, f"`num_samples` must be >= 2 to form a pair, got {self.num_samples}."),
            (self.min_score_gap >= 0, f"`min_score_gap` must be >= 0, got {self.min_score_gap}."),
            (self.num_shards >= 1, f"`num_shards` must be >= 1, got {self.num_shards}."),
            (
                0 <= self.shard_index < self.num_shards,
                f"`shard_index` must be in [0, {self.num_shards}), got {self.shard_index}.",
            ),
            (bool(self.dataset_name.strip()), "`dataset_name` must not be empty."),
            (
                self.drop_truncated in DROP_TRUNCATED,
                f"`drop_truncated` must be one of {', '.join(DROP_TRUNCATED)}, got {self.drop_truncated!r}.",
            ),
            (
                self.keep_truncated is None or isinstance(self.keep_truncated, bool),
                f"`keep_truncated` must be true or false, got {self.keep_truncated!r}.",
            ),
            (
                self.keep_truncated is None or self.drop_truncated in ("chosen", self.keep_truncated_means),
                f"`keep_truncated: {str(self.keep_truncated).lower()}` (deprecated) means `drop_truncated: "
                f"{self.keep_truncated_means}`, but `drop_truncated: {self.drop_truncated}` is given too; keep only "
                "`drop_truncated`.",
            ),
            (not self.slice_problem, self.slice_problem),
            (
                self.has_scorer,
                "Give exactly one scorer: `reward_model` (a classifier reward model or a LLaMA-Factory `stage: rm` "
                "output dir) or `reward_function` (`package.module:function`); got neither.",
            ),
        ]

    @property
    def slice_problem(self) -> str:
        """Why ``prompt_slice`` cannot be read, or ""."""
        if self.prompt_slice is None:
            return ""
        text = str(self.prompt_slice).strip()
        for separator, fits in ((":", lambda a, b: 0 <= a < b), ("/", lambda k, n: 1 <= k <= n)):
            left, found, right = text.partition(separator)
            if found and left.strip().isdigit() and right.strip().isdigit() and fits(int(left), int(right)):
                return ""
        return (
            f"`prompt_slice` must be `START:STOP` (0 <= START < STOP) or `K/N` (1 <= K <= N), got "
            f"{self.prompt_slice!r}."
        )

    def prompt_range(self, total: int) -> range:
        """The indices ``prompt_slice`` takes of ``total`` prompts (all of them without one); ``K/N`` splits them
        into N parts whose sizes differ by at most one."""
        if self.prompt_slice is None:
            return range(total)
        text = str(self.prompt_slice).strip()
        if ":" in text:
            start, stop = (int(part) for part in text.split(":"))
            return range(min(start, total), min(stop, total))
        part, parts = (int(value) for value in text.split("/"))
        return range((part - 1) * total // parts, part * total // parts)

    @property
    def keep_truncated_means(self) -> str | None:
        """The ``drop_truncated`` value that the deprecated ``keep_truncated`` stands for (None when not given).

        ``drop_truncated`` at its default, ``chosen``, counts as not given (the dataclass cannot tell the two apart),
        so only ``both`` or ``none`` can conflict with ``keep_truncated``.
        """
        if self.keep_truncated is None:
            return None
        return "none" if self.keep_truncated else "both"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_truncated is not None:  # validated: a bool that agrees with `drop_truncated`
            means = self.keep_truncated_means
            warnings.warn(
                f"`keep_truncated` is deprecated: use `drop_truncated: {means}` instead of "
                f"`keep_truncated: {str(self.keep_truncated).lower()}` (`drop_truncated: none|both`; the default, "
                "`chosen`, drops a pair only when its chosen answer was cut off).",
                FutureWarning,
                stacklevel=3,  # the caller of the dataclass's __init__
            )
            self.drop_truncated = means


# Keys whose change alters the samples (resp. the scores) already saved in `output_dir`.
SAMPLING_KEYS = ("model_name_or_path", "adapter_name_or_path", "template", "default_system", "enable_thinking",
                 "cutoff_len", "dataset", "max_samples", "num_samples", "temperature", "top_p", "max_new_tokens",
                 "seed", "backend", "server_model", "prompt_slice")  # fmt: skip
SCORING_KEYS = ("reward_model", "reward_template", "reward_function")


def parse_pairs_args(raw: dict[str, Any]) -> tuple[PairsArguments, "ModelArguments", "DataArguments"]:
    return parse_args(raw, PairsArguments)


def fingerprint(pairs_args: PairsArguments, model_args: Any, data_args: Any, backend: str) -> dict[str, dict]:
    """The settings that saved partial results depend on, split by phase."""
    values = {**vars(model_args), **vars(data_args), **asdict(pairs_args), "backend": backend}
    return {
        "sampling": {key: values.get(key) for key in SAMPLING_KEYS},
        "scoring": {key: values.get(key) for key in SCORING_KEYS},
    }
