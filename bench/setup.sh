# Sourced by bench/*/run: makes sure the product's .venv and the peers' bench/.venv-peers exist.
# The peers (Datasette, sqlite-utils) and the bench client's own libraries live in their own venv so
# they never touch the product's dependencies.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
PEER_REQS=(datasette==1.0a41 sqlite-utils httpx psutil "psycopg[binary]" orjson msgspec)

# Install (again) when the venv is missing or the product no longer imports in it (a dependency added).
if [ ! -x "$ROOT/.venv/bin/pushbase" ] || ! "$ROOT/.venv/bin/python" -c "import pushbase.web.app, pushbase.worker" >/dev/null 2>&1; then
  echo "bench: installing Pushbase into $ROOT/.venv" >&2
  [ -x "$ROOT/.venv/bin/python" ] || "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT" >/dev/null
fi

PEERS="$ROOT/bench/.venv-peers"
MARKER="$PEERS/.bench-reqs"
if [ ! -x "$PEERS/bin/python" ] || [ "$(cat "$MARKER" 2>/dev/null)" != "${PEER_REQS[*]}" ]; then
  echo "bench: installing the peers into $PEERS" >&2
  [ -x "$PEERS/bin/python" ] || "$PY" -m venv "$PEERS"
  "$PEERS/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! "$PEERS/bin/python" -m pip install -q "${PEER_REQS[@]}" >"$PEERS/pip.log" 2>&1; then
    tail -20 "$PEERS/pip.log" >&2; exit 1
  fi
  echo "${PEER_REQS[*]}" > "$MARKER"
fi
mkdir -p "$ROOT/bench/results"
export BENCH_ROOT="$ROOT"
