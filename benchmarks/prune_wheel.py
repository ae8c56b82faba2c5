"""Copy a wheel without the native libraries a machine will never load: ``prune_wheel.py WHEEL DEST --keep TEXT``.

Every ``.so`` whose name contains none of the ``--keep`` texts is left out, and so are its lines in the wheel's
``RECORD`` (pip checks the files against it). Used by ``gpu_wheelhouse.sh`` for bitsandbytes, whose wheel carries
one CUDA library per CUDA version (43 MiB) where the GPU image's torch loads one (4 MiB).
"""

import argparse
import zipfile
from pathlib import Path


def prune(wheel: Path, dest: Path, keep: list[str]) -> tuple[Path, int, int]:
    """Write the pruned copy into ``dest``; (its path, files kept, files left out)."""
    target = dest / wheel.name
    dropped: set[str] = set()
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        names = source.namelist()
        for name in names:
            if name.endswith(".so") and not any(text in Path(name).name for text in keep):
                dropped.add(name)
        for name in names:
            if name in dropped:
                continue
            data = source.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if line.split(",", 1)[0] not in dropped) + "\n").encode()
            out.writestr(source.getinfo(name), data)
    return target, len(names) - len(dropped), len(dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--keep", action="append", required=True, help="keep a .so whose name contains this")
    args = parser.parse_args()
    target, kept, dropped = prune(args.wheel, args.dest, args.keep)
    size = target.stat().st_size / 2**20
    print(f"prune_wheel: {target.name}: {kept} files kept, {dropped} libraries left out, {size:.1f} MiB")


if __name__ == "__main__":
    main()
