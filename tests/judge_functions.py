"""Judge functions for tests/test_judges.py: preferences whose length and quality effects are known exactly."""

import math
import os


def length_and_quality(messages: list[dict], answer_a: str, answer_b: str) -> float:
    """P(A beats B) = sigmoid(3 tanh(delta_chars / sd) + [good] difference): the GLM's own shape for length
    (sd: the spread of the length differences, `JUDGE_LENGTH_SD`), plus one logit for a better answer."""
    sd = float(os.environ.get("JUDGE_LENGTH_SD", "300"))
    logit = 3.0 * math.tanh((len(answer_a) - len(answer_b)) / sd)
    logit += ("[good]" in answer_a) - ("[good]" in answer_b)
    return 1.0 / (1.0 + math.exp(-logit))


def longer_wins(messages: list[dict], answer_a: str, answer_b: str) -> float:
    """P(A beats B) = sigmoid(3 tanh(delta_chars / 300)): a judge that likes length alone."""
    return 1.0 / (1.0 + math.exp(-3.0 * math.tanh((len(answer_a) - len(answer_b)) / 300)))


def first_slot(messages: list[dict], answer_a: str, answer_b: str) -> float:
    """Always the answer shown first."""
    return 1.0


def raises(messages: list[dict], answer_a: str, answer_b: str) -> float:
    raise RuntimeError("the judge's service is down")


def text(messages: list[dict], answer_a: str, answer_b: str) -> str:
    return "0.7"
