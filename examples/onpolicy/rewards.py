"""A verifiable reward for the on-policy example: short, on-topic, complete, and not looping.

Used as `reward_function: examples/onpolicy/rewards.py:concise_answer` (run from the repository root). A reward
function takes the prompt as chat messages (system first, if any) and one response, and returns a float; it
runs on the CPU next to the sampler, so keep it cheap.

Why more than a word count: a reward that only counts words is maximised by one-word answers ("Apple.") and
says nothing against loops ("akhimah, akhimah, ..."), the two failures seen when SmolLM2 was trained on such
pairs. Each term below closes one of those doors.
"""

import re


NUMBERS = {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
MIN_WORDS = 3


def word_limit(prompt: str, default: int = 10) -> int:
    match = re.search(r"at most (\w+) words", prompt)
    if not match:
        return default
    word = match.group(1).lower()
    return int(word) if word.isdigit() else NUMBERS.get(word, default)


def topic_of(prompt: str) -> str:
    """The last words of the instruction after its verb: 'describe the ocean.' -> 'ocean'."""
    match = re.search(r"(?:describe|explain|summarize) (.+?)\.?$", prompt)
    words = match.group(1).split() if match else []
    return words[-1].lower() if words else ""


def concise_answer(messages: list[dict[str, str]], response: str) -> float:
    """1 for a complete, on-topic answer within the word limit; less for each way it misses."""
    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    words = re.findall(r"[\w'-]+", response.lower())
    limit = word_limit(prompt)
    if len(words) < MIN_WORDS:
        return -1.0  # a one-word answer is not an answer
    if max(words.count(word) for word in set(words)) > 3:
        return -1.0  # a loop
    score = 1.0 if len(words) <= limit else max(-1.0, 1.0 - (len(words) - limit) / limit)
    score += 0.5 if topic_of(prompt) in response.lower() else 0.0
    score += 0.25 if response.rstrip().endswith((".", "!", "?")) else 0.0
    return score
