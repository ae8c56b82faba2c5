"""The plugin's one warning line per process, for the startup line and the host hooks.

Neutral on purpose (it imports only ``sys``): :mod:`simpo_plugin._startup` imports it only when it has something to
say, and :mod:`simpo_plugin.host.hooks` prints through it, so neither imports the other.
"""

import sys


_WARNED = False


def warn_once(message: str) -> None:
    """Print ``simpo-plugin: MESSAGE; set SIMPO_PLUGIN_DISABLE=1 to silence this`` to stderr, at most once per process.

    The plugin must never break the interpreter or the host: a failure to hook in becomes this line, not an error.
    """
    global _WARNED
    if not _WARNED:
        _WARNED = True
        sys.stderr.write(f"simpo-plugin: {message}; set SIMPO_PLUGIN_DISABLE=1 to silence this\n")
