#!/usr/bin/env bash
# Copies the browser libraries the operator page inlines (src/admin/mod.rs) from the npm install
# of tests/client (`npm ci --prefix tests/client`, from its package-lock.json) into
# static/vendor/. tests/admin.rs checks that the copies are the locked packages' files.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d tests/client/node_modules/uplot ] || npm ci --prefix tests/client --no-audit --no-fund
mkdir -p static/vendor/uplot
cp tests/client/node_modules/uplot/dist/uPlot.iife.min.js tests/client/node_modules/uplot/dist/uPlot.min.css \
   tests/client/node_modules/uplot/LICENSE static/vendor/uplot/
