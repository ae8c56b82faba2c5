"""Run by test_startup with ``python -S``: every write outside $TMPDIR fails with EROFS, then site runs the .pth.

This is how a read-only image (site-packages, $HOME) behaves; the temp directory stays writable because torch
itself needs one. Prints whether the host hooks went in, the stage is known, and which writes were refused.
"""

import errno
import os
import sys


WRITABLE = (os.environ["TMPDIR"], "/dev/")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
refused: list[str] = []


def _refuse(path: object) -> None:
    if isinstance(path, int) or path is None:
        return
    name = os.path.abspath(os.fsdecode(path))
    if not name.startswith(WRITABLE):
        refused.append(name)
        raise OSError(errno.EROFS, "Read-only file system", name)


def read_only(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS
        ):
            _refuse(path)
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.symlink", "shutil.copyfile"):
        _refuse(args[0])


sys.addaudithook(read_only)
import site  # noqa: E402 - the .pth line must run with the hook in place


site.main()

import llamafactory.train.tuner as tuner  # noqa: E402

from simpo_plugin.host.registry import REGISTRY  # noqa: E402


print(hasattr(tuner.get_train_args, "__simpo_original__"), REGISTRY.get("simpo").name)
print("\n".join(refused))
