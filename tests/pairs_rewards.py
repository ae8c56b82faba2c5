"""Reward functions for the pairs tests, loaded by `reward_function: <this file>:<name>`."""

import math
import time


def distinct_chars(messages: list[dict[str, str]], response: str) -> float:
    """Varies from sample to sample, so few prompts tie; deterministic, so reruns score the same."""
    return len(set(response)) + 0.001 * len(response)


def slow_distinct_chars(messages: list[dict[str, str]], response: str) -> float:
    time.sleep(0.03)
    return distinct_chars(messages, response)


def not_a_number(messages: list[dict[str, str]], response: str) -> str:
    return "good"


def nan_when_short(messages: list[dict[str, str]], response: str) -> float:
    return math.nan if len(response) < 3 else float(len(response))


def echo_prompt_length(messages: list[dict[str, str]], response: str) -> float:
    """Sees the whole conversation, system first: a check that reward functions get the prompt as a chat."""
    return float(sum(len(m["content"]) for m in messages if m["role"] != "assistant") + len(response) % 7)


CALLS = {"count": 0}


def fails_after_the_first_probe(messages: list[dict[str, str]], response: str) -> float:
    """Scores the first probe's answers, then raises: an optional feature failing in the middle of a run."""
    CALLS["count"] += 1
    if CALLS["count"] > 4:
        raise RuntimeError("the reward server went away")
    return float(len(response))


def raises(messages: list[dict[str, str]], response: str) -> float:
    """A reward whose service is down: `pairs` and `eval` stop with one line naming it and the prompt."""
    raise ValueError("the reward service is down")
