#!/usr/bin/env bash
# `make gpu-wheelhouse`: every wheel the GPU check needs beyond the GPU machine's image, into the git-ignored .whl/,
# built here where PyPI answers (the GPU machine reaches no registry; the wheels travel with the command, 64 MiB in
# all with the tree). The image (gpu-notes.md) has Python 3.12, torch with CUDA, numpy, pandas, pyarrow, scipy,
# safetensors, sentencepiece, huggingface-hub, tokenizers 0.23.2, transformers 5.17 and accelerate 1.15; the host's
# pins need their own transformers, tokenizers and accelerate, so those travel. Versions are the ones .venv runs
# (what the suite tested); deepspeed and the project are built into wheels here. Fails above 45 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
limit_mib=45
BNB_VERSION=0.50.2
rm -rf .whl && mkdir -p .whl
version() { "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
# The host and what its training path imports that the image lacks (read off a run: `sys.modules` after
# `llamafactory-cli train`): datasets' dill, multiprocess and fsspec pins, omegaconf, torchdata, hjson (DeepSpeed).
pins=()
for name in llamafactory transformers tokenizers accelerate peft trl datasets dill multiprocess fsspec omegaconf \
    torchdata hjson; do
  pins+=("$name==$(version "$name")")
done
pins+=("liger-kernel==0.8.5")  # not in .venv (CPU): the GPU check applies it where it imports
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${pins[@]}"
# bitsandbytes (QLoRA) without the CUDA libraries the image's torch (CUDA 13.0) never loads: 43 MiB -> ~5
mkdir -p .whl/raw
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 -d .whl/raw "bitsandbytes==$BNB_VERSION"
"$py" benchmarks/prune_wheel.py .whl/raw/bitsandbytes-*.whl .whl --keep cuda130 --keep cpu
rm -rf .whl/raw
# multiprocess's wheels are per Python version: also this interpreter's, for the CPU dry run
"$py" -m pip download -q --no-deps --only-binary=:all: -d .whl "multiprocess==$(version multiprocess)"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
"$py" -m pip wheel -q --no-deps -w .whl .
size_kib=$(du -sk .whl | cut -f1)
echo "gpu-wheelhouse: $(ls .whl | wc -l) wheels, $((size_kib / 1024)) MiB in .whl/"
ls -1 .whl
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
  echo "gpu-wheelhouse: $((size_kib / 1024)) MiB is over the $limit_mib MiB the GPU machine's transfer leaves for it" >&2
  exit 1
fi
