#!/usr/bin/env bash
# Wheels for a machine that reaches no package registry (the lent GPU machine), pinned by requirements.lock.
#
#   scripts/wheelhouse.sh DEST PYTHON_VERSION [NAME ...]
#
# With NAMEs, only those packages' pinned versions (for a machine that already has the rest, e.g. an image with
# torch); without, every line of the lock. Wheels only, for manylinux x86-64; a package published only as a
# source archive (deepspeed) is built into a wheel here. Install there with
#   python3 -m pip install --no-index --no-deps --target /tmp/site DEST/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$1 python_version=$2
shift 2
mkdir -p "$dest"
if [ "$#" -gt 0 ]; then
  pins=()
  for name in "$@"; do
    pin=$(grep -iE "^${name}==" requirements.lock | cut -d' ' -f1) || { echo "$name is not in requirements.lock" >&2; exit 2; }
    pins+=("$pin")
  done
else
  mapfile -t pins < <(grep -E '^[A-Za-z0-9_.-]+==' requirements.lock | cut -d' ' -f1)
fi
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
for pin in "${pins[@]}"; do
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
      --python-version "$python_version" "${platforms[@]}" -d "$dest" "$pin" 2>/dev/null; then
    python3 -m pip wheel --quiet --no-deps -w "$dest" "$pin"  # pure-Python source archive → a wheel
  fi
done
du -sh "$dest"
