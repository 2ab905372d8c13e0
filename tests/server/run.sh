#!/usr/bin/env bash
# Integration suite of `lem serve`: a real server on a free loopback port with the
# packaged default model, driven by the official openai and anthropic Python packages,
# requests and curl (installed into a venv here). Extra arguments go to pytest.
#
#   tests/server/run.sh            # builds target/release/lem if missing
#   tests/server/run.sh -k session
set -euo pipefail
cd "$(dirname "$0")/../.."

LEM_BIN=${LEM_BIN:-$PWD/target/release/lem}
export LEM_BIN
if [ ! -x "$LEM_BIN" ]; then
  cargo build --release --locked -p lem-cli
fi
"$LEM_BIN" models fetch smollm2-135m >/dev/null

VENV=${LEM_SERVER_VENV:-$PWD/target/server-venv}
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    echo "tests/server: installing python3-venv" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >&2
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >&2; fi
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
fi
if ! "$VENV/bin/python" -c "import openai, anthropic, requests, pytest, jsonschema, pydantic" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check openai anthropic requests pytest jsonschema
fi
command -v curl >/dev/null || { echo "tests/server: curl is required" >&2; exit 1; }

exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rA --durations=8 tests/server "$@"
