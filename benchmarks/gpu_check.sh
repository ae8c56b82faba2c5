#!/usr/bin/env bash
# The GPU check in one offline command (docs/performance.md, "GPU"): installs the wheelhouse of .whl/
# (`make gpu-wheelhouse`, built where PyPI answers) into a venv over the machine's own packages, then runs
# benchmarks/gpu_check.py, which prints one table (PASS / FAIL / FINDING / SKIP per check) and writes OUT/.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--deadline SECONDS] [--parts setup,exact,syncs,cli,bench]
#   bash benchmarks/gpu_check.sh --cpu-dry-run     # what runs on the CPU, tiny shapes: proves the script
#
# In the dry run .venv's packages stand in for the GPU image's (beneath the wheelhouse, through a .pth line).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=gpu-check-out
dry=0
args=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --cpu-dry-run) dry=1; shift ;;
    *) shift ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
if compgen -G "$root/.whl/*.whl" > /dev/null; then
  venv=$out/venv
  if [ $dry = 1 ]; then
    image=$root/.venv/bin/python
    base=$("$image" -c "import sys; print(sys._base_executable)")
    "$base" -m venv "$venv"
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$image" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/zz_image.pth"
    export PATH="$venv/bin:$PATH:$root/.venv/bin"  # ninja (DeepSpeed builds its ops with it) comes with the image
  else
    python3 -m venv --system-site-packages "$venv"
    export PATH="$venv/bin:$PATH"
  fi
  echo "gpu_check: installing $(ls "$root"/.whl/*.whl | wc -l) wheels from .whl/ without a network"
  names=$(ls "$root"/.whl/*.whl | xargs -n1 basename | cut -d- -f1 | sort -u)  # pip picks each one's wheel
  "$venv/bin/python" -m pip install -q --no-index --no-deps --ignore-installed --find-links "$root/.whl" $names
  if [ $dry = 1 ]; then
    # DeepSpeed compiles its CPU collective op on first use, per copy (the build names its source paths): 50 s alone,
    # about 140 s beside the other test worker. When the wheelhouse's DeepSpeed is the release .venv runs (it is
    # built from that release's sdist), the dry run uninstalls its copy, once installed, and goes on with .venv's
    # and its build in ~/.cache/torch_extensions; another release compiles into a folder of its own, since in the
    # shared one it would replace .venv's build.
    version="import importlib.metadata as m; print(m.version('deepspeed'))"
    if [ "$("$venv/bin/python" -c "$version")" = "$("$image" -c "$version")" ]; then
      "$venv/bin/python" -m pip uninstall -q -y deepspeed
      echo "gpu_check: deepspeed $("$image" -c "$version") from .whl/ installs; the dry run runs .venv's copy of it"
    else
      export TORCH_EXTENSIONS_DIR=$out/torch_extensions
    fi
  fi
  # torch is the image's, so its torchrun is too: a script whose interpreter does not see this venv. The host's
  # launcher (FORCE_TORCHRUN, the cli part) runs `torchrun` from PATH; this one runs it in the venv.
  if [ ! -e "$venv/bin/torchrun" ]; then
    printf '#!/bin/sh\nexec "%s" -m torch.distributed.run "$@"\n' "$venv/bin/python" > "$venv/bin/torchrun"
    chmod +x "$venv/bin/torchrun"
  fi
  python=$venv/bin/python
else
  echo "gpu_check: no wheelhouse in .whl/ (make gpu-wheelhouse); running with what is installed"
  python=$root/.venv/bin/python
  [ -x "$python" ] || python=python3
fi
cd "$root"
exec "$python" benchmarks/gpu_check.py "${args[@]}"
