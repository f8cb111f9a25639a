#!/usr/bin/env bash
# Installs what the tests need that cargo does not (Debian packages, only when missing), then
# runs every test. `.ci/run` calls exactly this; so does the README.
set -euo pipefail
cd "$(dirname "$0")/.."

# package -> a file it installs
declare -A needs=(
  [chromium]=/usr/bin/chromium
  [chromium-driver]=/usr/bin/chromedriver
  [squid]=/usr/sbin/squid
  [nginx]=/usr/sbin/nginx
  [nodejs]=/usr/bin/node
  [npm]=/usr/bin/npm
  [curl]=/usr/bin/curl
  [openssl]=/usr/bin/openssl
  [redis-server]=/usr/bin/redis-server
  [redis-tools]=/usr/bin/redis-cli
  [python3]=/usr/bin/python3
  [python3-venv]=/usr/share/doc/python3-venv
)
missing=()
for pkg in "${!needs[@]}"; do
  # Node and npm from anywhere on PATH will do (a machine may bring its own, newer, Node).
  case $pkg in
    nodejs) command -v node >/dev/null && continue ;;
    npm) command -v npm >/dev/null && continue ;;
    # What the virtualenv below needs: the venv module with ensurepip (python3-venv on Debian).
    python3-venv) python3 -c 'import venv, ensurepip' 2>/dev/null && continue ;;
  esac
  [ -x "${needs[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Node packages of the client tests (tests/client: the `ws` WebSocket client, `typescript` for
# the check of static/switchyard.d.ts in tests/docs.rs, and `uplot`, whose copy in
# static/vendor/ tests/admin.rs compares; `socket.io-client` for tests/socketio_client.rs and the
# seed page of tests/socketio_browser.rs; `socket.io`, the Node server of the bench's `socketio`
# scenario), from the lock file.
if [ ! -d tests/client/node_modules/ws ] || [ ! -d tests/client/node_modules/typescript ] || [ ! -d tests/client/node_modules/uplot ] || [ ! -d tests/client/node_modules/socket.io-client ] || [ ! -d tests/client/node_modules/socket.io ]; then
  npm ci --prefix tests/client --no-audit --no-fund
fi

# The python-socketio client of tests/socketio_python.rs, with pip into a virtualenv under
# target/, from tests/python/requirements.txt.
venv=target/python-socketio
if ! "$venv/bin/python" -c 'import socketio, requests, websocket' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

# Lints first: clippy's default set and the pedantic lints Cargo.toml names, over every target
# (library, binary, tests, benches, examples), warnings as errors.
cargo clippy --locked --all-targets --all-features -- -D warnings
# The API documentation builds without a warning (broken or private links, bad code blocks);
# clippy above already fails on a public item without docs (`missing_docs`).
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --all-features

# One build shared by every test binary; test binaries run one at a time, their tests in
# parallel.
cargo test --locked --all-features -- --test-threads="${SWITCHYARD_TEST_THREADS:-4}"
