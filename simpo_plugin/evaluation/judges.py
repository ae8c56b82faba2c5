"""Judges: P(answer A beats answer B) for one instruction, from local models or functions, with no API.

- :class:`RewardJudge`: any scorer of :mod:`.scorers` (a classifier reward model, a LLaMA-Factory ``stage: rm``
  model, a ``reward_function``) scores each answer alone; ``P(A) = sigmoid(s_A - s_B)`` (Bradley-Terry), so the
  scores' scale matters: a reward model trained with a pairwise loss is on exactly that scale.
- :class:`FunctionJudge`: ``judge_function: package.module:function`` called as
  ``function(instruction_messages, answer_a, answer_b)`` and returning P(A beats B) in [0, 1] directly; called in
  both orders and averaged, like the LLM judge.
- :class:`LLMJudge`: any local chat model reads :data:`JUDGE_PROMPT` (AlpacaEval-style: the instruction, then
  "Answer 1" and "Answer 2") rendered with its own template, and the probability of its next token being ``1``
  rather than ``2`` is read from the logits (no sampling: one forward per pair and order, batched). Each pair is
  judged in both orders and ``P(A) = (P(1 | A first) + P(2 | B first)) / 2``, which cancels a preference for a
  position; the share of pairs whose two verdicts agree is the judge's position consistency.

Every judge returns, per pair, a :class:`Judgment` (ties count 1/2 wherever a verdict is turned into a win).
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import PairsConfigError


if TYPE_CHECKING:
    from ..sampling import Prompt


JUDGE_SYSTEM = "You are a careful judge of answers to instructions."
JUDGE_PROMPT = (
    "Here is an instruction and two answers to it.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Answer 1:\n{first}\n\n"
    "Answer 2:\n{second}\n\n"
    "Which answer follows the instruction better and is more helpful, accurate and harmless? "
    "Reply with the number of the better answer, 1 or 2, and nothing else."
)
VERDICTS = ("1", "2")


@dataclass(frozen=True)
class Judgment:
    """One pair's verdict: ``p_a`` = P(A beats B); for a two-order judge, each order's own probability."""

    p_a: float
    p_a_first: float | None = None  # P(A) when A was shown first
    p_a_second: float | None = None  # P(A) when A was shown second

    @property
    def consistent(self) -> bool | None:
        if self.p_a_first is None or self.p_a_second is None:
            return None
        return (self.p_a_first > 0.5) == (self.p_a_second > 0.5)


Pair = tuple["Prompt", str, str]  # (instruction, answer A, answer B)


class Judge(Protocol):
    name: str

    def judge(self, pairs: list[Pair]) -> list[Judgment]: ...


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def from_scores(scores_a: list[float], scores_b: list[float]) -> list[Judgment]:
    """Bradley-Terry judgments from two answers' rewards per instruction: ``P(A) = sigmoid(s_A - s_B)``."""
    return [Judgment(sigmoid(a - b)) for a, b in zip(scores_a, scores_b, strict=True)]


class RewardJudge:
    """Bradley-Terry on a scorer's scores: ``P(A) = sigmoid(s_A - s_B)``."""

    def __init__(self, scorer: Any, name: str = "reward") -> None:
        self.scorer, self.name = scorer, name

    def judge(self, pairs: list[Pair]) -> list[Judgment]:
        scores = self.scorer.score([(prompt, text) for prompt, a, b in pairs for text in (a, b)])
        return from_scores(scores[0::2], scores[1::2])


class FunctionJudge:
    """``function(instruction_messages, answer_a, answer_b) -> P(A beats B)``, called in both orders.

    P(A) = (f(A, B) + 1 - f(B, A)) / 2, as for the LLM judge: a function with a taste for the first slot is
    cancelled, and its position consistency is reported.
    """

    def __init__(self, function: Any, name: str = "function") -> None:
        self.function, self.name = function, name

    def _call(self, prompt: "Prompt", first: str, second: str, index: int) -> float:
        try:
            value = self.function(prompt.chat(), first, second)
        except Exception as exc:  # noqa: BLE001 - the user's code: named with the instruction, one line
            raise PairsConfigError(f"The judge `{self.name}` failed on instruction {index}: {exc!r}") from exc
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise PairsConfigError(
                f"The judge `{self.name}` must return a probability in [0, 1] (a number), got {value!r} on "
                f"instruction {index}."
            )
        return float(value)

    def judge(self, pairs: list[Pair]) -> list[Judgment]:
        judged = []
        for index, (prompt, a, b) in enumerate(pairs):
            first, second = self._call(prompt, a, b, index), 1.0 - self._call(prompt, b, a, index)
            judged.append(Judgment((first + second) / 2, first, second))
        return judged


def judge_messages(prompt: "Prompt", first: str, second: str) -> list[dict[str, str]]:
    """The judge's conversation for one order: the instruction (its last user turn, with earlier turns) and answers."""
    instruction = "\n\n".join(m["content"] for m in prompt.messages if m["role"] == "user")
    return [{"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, first=first, second=second)}]


class LLMJudge:
    """A local chat model as a pairwise judge, read from its logits over ``1`` and ``2`` (module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, template: Any, batch_size: int = 8, name: str = "llm") -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.batch_size, self.name = batch_size, name
        self.verdict_ids = [self._single_token(v) for v in VERDICTS]

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise PairsConfigError(f"the judge's tokenizer splits the verdict `{text}` into {len(ids)} tokens.")
        return ids[0]

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids up to where the judge's answer starts (the template's generation prompt included)."""
        ids, _ = self.template.encode_oneturn(
            self.tokenizer, messages + [{"role": "assistant", "content": ""}], JUDGE_SYSTEM, ""
        )
        return ids

    def first_choice(self, prompts: list[list[int]]) -> list[float]:
        """P(next token is ``1`` rather than ``2``) for each prompt, one batched forward per batch."""
        import torch

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        probabilities = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)  # left-padded
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            pair = logits[:, self.verdict_ids].float().softmax(-1)
            probabilities += pair[:, 0].tolist()
        return probabilities

    def judge(self, pairs: list[Pair]) -> list[Judgment]:
        prompts = [self.encode(judge_messages(prompt, a, b)) for prompt, a, b in pairs]
        prompts += [self.encode(judge_messages(prompt, b, a)) for prompt, a, b in pairs]
        first = self.first_choice(prompts)
        n = len(pairs)
        judged = []
        for i in range(n):
            a_first, a_second = first[i], 1.0 - first[n + i]
            judged.append(Judgment((a_first + a_second) / 2, a_first, a_second))
        return judged


def load_llm_judge(
    path: str, template: str | None, batch_size: int, trust_remote_code: bool = False, device: Any = None
) -> LLMJudge:
    """A chat model (full checkpoint or LoRA adapter) as an :class:`LLMJudge`, loaded by the host's loaders."""
    import json
    from pathlib import Path

    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import FinetuningArguments, get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    if not template:
        raise PairsConfigError("`judge_model` needs its chat template: give `judge_template` (or `template`).")
    keys: dict[str, Any] = {"model_name_or_path": path, "template": template, "trust_remote_code": trust_remote_code}
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        keys.update(model_name_or_path=base, adapter_name_or_path=path)
    try:
        model_args, data_args, _, _ = get_infer_args(keys)
    except ValueError as exc:
        raise PairsConfigError(f"`judge_model: {path}`: {exc}") from exc
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    chat_template = get_template_and_fix_tokenizer(tokenizer, data_args)
    if device is not None:
        model_args.device_map = None
    else:
        from ..sampling import one_device

        one_device(model_args)
    model = load_model(tokenizer, model_args, FinetuningArguments(), False)
    model.eval()
    if device is not None:
        model.to(device)
    return LLMJudge(model, tokenizer, chat_template, batch_size=batch_size, name=Path(path).name)


def load_judge(spec: str, template: str | None, device: Any = None, key: str = "simpo_probe_judge") -> Any:
    """A judge from one string: ``package.module:function`` (or ``file.py:function``) is a :class:`FunctionJudge`;
    anything else is a chat model path for an :class:`LLMJudge`."""
    from pathlib import Path

    if ":" in spec and not Path(spec).exists():
        from ..pairs import import_callable

        return FunctionJudge(import_callable(spec, key), spec)
    return load_llm_judge(spec, template, 8, device=device)


def position_consistency(judgments: list[Judgment]) -> float | None:
    """Share of pairs whose two orders agree; None for a judge that sees one order only."""
    flags = [j.consistent for j in judgments if j.consistent is not None]
    return sum(flags) / len(flags) if flags else None
