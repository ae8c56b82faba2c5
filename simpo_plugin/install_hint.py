"""The pip command that installs an optional feature's packages, for the way simpo-plugin itself was installed.

simpo-plugin is not on PyPI, so ``pip install 'simpo-plugin[eval]'`` finds nothing. An editable install from a
source folder (``dir_info.editable`` in the distribution's ``direct_url.json``, PEP 610) gets the extra from that
folder: ``pip install -e '/path/to/simpo-plugin[eval]'``. Any other install (a wheel, a git URL, ``pip install .``)
gets the extra's own packages with their version ranges, read from the installed metadata (pyproject.toml's
``[project.optional-dependencies]``): ``pip install 'alpaca-eval>=0.6.6' 'setuptools<80'``. Standard library only,
so every layer may call it.
"""

import json
import re
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


DISTRIBUTION = "simpo-plugin"
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _distribution() -> Any:
    try:
        return metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def extra_requirements(extra: str, dist: Any = None) -> list[str]:
    """The requirements (``openai>=1.40``) that ``extra`` adds, from the distribution's ``Requires-Dist``."""
    dist = dist if dist is not None else _distribution()
    found = []
    for line in (dist.requires or []) if dist is not None else []:
        requirement, _, marker = line.partition(";")
        if extra in _EXTRA.findall(marker):
            found.append(requirement.replace(" ", ""))
    return found


def editable_source(dist: Any = None) -> str | None:
    """The source folder of an editable install (from ``direct_url.json``), else None."""
    dist = dist if dist is not None else _distribution()
    if dist is None:
        return None
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        return None
    if not isinstance(direct, dict) or not (direct.get("dir_info") or {}).get("editable"):
        return None
    url = urlparse(str(direct.get("url", "")))
    return unquote(url.path) if url.scheme == "file" and url.path else None


def install_hint(extra: str, dist: Any = None) -> str:
    """``pip install ...`` that installs ``extra``'s packages into this environment (module docstring)."""
    dist = dist if dist is not None else _distribution()
    source = editable_source(dist)
    if source is None and dist is None:  # not installed: a checkout on the path (PYTHONPATH) has its pyproject.toml
        root = Path(__file__).resolve().parent.parent
        source = str(root) if (root / "pyproject.toml").is_file() else None
    if source is not None:
        return f"pip install -e {shlex.quote(f'{source}[{extra}]')}"
    requirements = extra_requirements(extra, dist)
    if not requirements:
        return f"pip install -e '.[{extra}]' (from a checkout of simpo-plugin)"
    return "pip install " + " ".join(shlex.quote(requirement) for requirement in requirements)
