"""One run's warnings, said again in its last lines.

A warning prints when it happens, and in a training run that is inside the progress bar's output, where it scrolls
away. :func:`recapped` wraps a whole run (``stage: simpo`` training, ``simpo-plugin pairs``, ``simpo-plugin eval``):
it collects every warning logged under ``llamafactory.simpo`` (the plugin's loggers, printed by the host's handler)
and every Python warning raised from the plugin's code, and closes the run with each distinct warning once, counted,
through the host's logger. Under several processes only global rank 0 prints the recap (the host's
``warning_rank0`` already keeps the other ranks' warnings from being logged at all).

Neutral on purpose (it imports only the standard library): the stage, pairs and eval all close through it.
"""

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


PLUGIN_LOGGER = "llamafactory.simpo"  # the parent of every logger of the plugin
PREFIXES = ("simpo-plugin pairs: ", "simpo-plugin eval: ", "simpo-plugin: ")
SHOWN = 12  # distinct warnings listed; the rest are counted
PACKAGE = str(Path(__file__).resolve().parent)


class WarningRecap(logging.Handler):
    """Counts each distinct warning message of a run (in the order they first came)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.add(record.getMessage())

    def add(self, message: str) -> None:
        text = " ".join(message.split())
        for prefix in PREFIXES:
            text = text.removeprefix(prefix)
        self.counts[text] = self.counts.get(text, 0) + 1

    def lines(self) -> list[str]:
        """The recap: a heading, then one line per distinct warning; nothing when the run gave none."""
        total = len(self.counts)
        if not total:
            return []
        plural = "s" * (total > 1)
        lines = [f"simpo-plugin: recap: this run gave {total} warning{plural} (printed above as they came):"]
        for number, (text, count) in enumerate(list(self.counts.items())[:SHOWN], 1):
            times = f" ({count} times)" if count > 1 else ""
            lines.append(f"simpo-plugin: recap {number}/{total}{times}: {text}")
        if total > SHOWN:
            lines.append(f"simpo-plugin: recap: {total - SHOWN} more warnings above.")
        return lines


def is_main_process() -> bool:
    """Global rank 0 (or a single process): the one that prints the recap."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


@contextmanager
def recapped(logger: logging.Logger) -> Iterator[WarningRecap]:
    """Collect the run's warnings while the block runs; then, on rank 0, log the recap through ``logger`` (also when
    the block raises: the warnings before a failure are the likeliest cause of it)."""
    recap = WarningRecap()
    source = logging.getLogger(PLUGIN_LOGGER)
    source.addHandler(recap)
    with warnings.catch_warnings():  # restores showwarning on exit
        show = warnings.showwarning

        def show_and_count(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            if str(Path(filename).resolve()).startswith(PACKAGE):
                recap.add(f"{category.__name__}: {message}")
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_and_count
        try:
            yield recap
        finally:
            source.removeHandler(recap)
            if is_main_process():
                for line in recap.lines():
                    logger.warning(line)
