"""The keys of ``simpo-plugin eval``: the shared generation keys (greedy by default), the models, the judge, checks.

Errors: :class:`simpo_plugin.errors.PairsConfigError`, naming the key (docs/evaluation.md lists every key).
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..sampling import GenerationArguments


@dataclass
class EvalArguments(GenerationArguments):
    """Keys of ``simpo-plugin eval``: the shared ones (greedy by default), the models, the judge and the checks."""

    command: ClassVar[str] = "eval"

    models: list[Any] | str | None = field(
        default=None,
        metadata={
            "help": "Two or more models: paths (full checkpoints or LoRA adapters; their answers are generated) or "
            "`{name: NAME, outputs: FILE}` (precomputed answers in AlpacaEval's model_outputs format)."
        },
    )
    baseline: str | None = field(
        default=None, metadata={"help": "The model every other one is compared against (default: the first)."}
    )
    pairwise: bool = field(
        default=False, metadata={"help": "Judge every pair of models, not only each against the baseline."}
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "A local chat model as a pairwise judge: P(A) read from its logits over `1` vs `2`."},
    )
    judge_template: str | None = field(
        default=None, metadata={"help": "The judge model's template (default: `template`)."}
    )
    judge_function: str | None = field(
        default=None,
        metadata={"help": "`package.module:function`: (instruction_messages, answer_a, answer_b) -> P(A beats B)."},
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Judge prompts per forward pass."})
    checks: list[str] | str | None = field(
        default=None,
        metadata={"help": "Capability check sets: bundled names (arithmetic, json_format, constraints) or files."},
    )
    instruction_difficulty: str | None = field(
        default=None,
        metadata={
            "help": "AlpacaEval's per-instruction difficulties (a CSV or JSON of instruction -> difficulty): the LC "
            "win rate then uses its full formula."
        },
    )
    bootstrap_samples: int = field(
        default=200, metadata={"help": "Bootstrap resamples for the intervals (the LC one refits the GLM each time)."}
    )
    num_samples: int = field(default=1, metadata={"help": "Responses per prompt and model (greedy: 1)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy decoding (the default)."})
    max_new_tokens: int = field(
        default=512, metadata={"help": "Longest response; one still running then counts as not ended."}
    )
    answers_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder of saved answers reused by any evaluation that would generate the same ones (default: "
            "`output_dir/answers`; `none` keeps nothing)."
        },
    )
    show: int = field(default=8, metadata={"help": "Prompts shown side by side in eval_report.md."})

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        if isinstance(self.checks, str):
            self.checks = [c.strip() for c in self.checks.split(",") if c.strip()]
        super().__post_init__()

    @property
    def judges(self) -> list[str]:
        """The judge keys that are set (at most one may be)."""
        named = {"judge_model": self.judge_model, "judge_function": self.judge_function,
                 "reward_model": self.reward_model, "reward_function": self.reward_function}  # fmt: skip
        return [key for key, value in named.items() if value]

    def validation(self) -> list[tuple[bool, str]]:
        judges = self.judges
        return super().validation() + [
            (len(self.models or []) >= 2, "`models` needs two or more models (paths or {name, outputs} entries)."),
            (self.show >= 0, f"`show` must be >= 0, got {self.show}."),
            (self.judge_batch_size >= 1, f"`judge_batch_size` must be >= 1, got {self.judge_batch_size}."),
            (self.bootstrap_samples >= 0, f"`bootstrap_samples` must be >= 0, got {self.bootstrap_samples}."),
            (len(judges) <= 1, f"Give one judge, not {' and '.join(f'`{k}`' for k in judges)}."),
            (
                self.resolved_backend == "hf",
                "`simpo-plugin eval` generates in this process (`backend: hf`); for "
                "answers from an inference server, write them to an outputs file and list it as `{name, outputs}`.",
            ),
        ]
