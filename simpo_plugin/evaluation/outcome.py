"""Whether an eval's answers can be judged: a model whose every answer is empty is an error, one whose answers
mostly ran into ``max_new_tokens`` (or are empty) a warning, each counted and naming the key that fixes it.

A leaderboard over empty or cut-off answers ranks nothing; without this check it reads like any other.
"""

from typing import TYPE_CHECKING

from ..errors import EmptyOutput


if TYPE_CHECKING:
    from .metrics import Generated


MOSTLY = 0.5  # a share of answers empty or cut off at or above this is warned about


def check_answers(
    answers: dict[str, list[list["Generated"]]], generated: set[str], max_new_tokens: int, written: str
) -> list[str]:
    """The warnings about each model's first answers; raise :class:`EmptyOutput` when a model's are all empty.

    Args:
        answers: each model's answers per prompt (the first one is judged).
        generated: the models whose answers were generated here (a file's answers carry no stop information).
        written: where the answers are, for the message.
    """
    found, empty_models = [], []
    for name, rows in answers.items():
        total = len(rows)
        empty = sum(not row[0].text.strip() for row in rows)
        cut = sum(not row[0].ended for row in rows) if name in generated else 0
        source = "generated" if name in generated else "read from its outputs file"
        if total and empty == total:
            fix = "check `template` (the model may stop at once)" if name in generated else "check the file"
            empty_models.append(f"all {total} answers of `{name}` are empty ({source}; {fix})")
        elif total and cut == total:
            found.append(f"all {total} answers of `{name}` ran into `max_new_tokens: {max_new_tokens}` (none ended "
                         "by itself): the leaderboard compares cut-off answers. Raise `max_new_tokens`.")  # fmt: skip
        elif total and (empty + cut) / total >= MOSTLY:
            parts = [f"{cut} ran into `max_new_tokens: {max_new_tokens}` (raise it)"] * bool(cut)
            parts += [f"{empty} are empty (check `template`)"] * bool(empty)
            found.append(f"{' and '.join(parts)} of the {total} answers of `{name}`: its win rates rest on "
                         "answers that say little.")  # fmt: skip
    if empty_models:
        raise EmptyOutput(
            f"{'; '.join(empty_models)}: the leaderboard compares nothing. The answers are in {written}."
        )
    return found
