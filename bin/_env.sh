# Sourced by bin/lab, bin/test and bin/docs: create .venv and install the project on first use (quietly, idempotently).
# Re-installs only when pyproject.toml or requirements-dev.txt change. Set PYTHON to choose the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.batchnorm-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements-dev.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "batchnorm: setting up $VENV (first use; this takes a few minutes)..." >&2
  log="$(mktemp)"
  if ! { "${PYTHON:-python3}" -m venv "$VENV" \
         && "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt" -e "$ROOT[lab,dev,docs,bench]"; } >"$log" 2>&1; then
    echo "batchnorm: installation failed; pip said:" >&2
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -40 >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" > "$STAMP"
fi
PY="$VENV/bin/python"
