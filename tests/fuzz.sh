#!/usr/bin/env bash
# Fuzzes the protocol's parsers and its outbound encoder with cargo-fuzz (libFuzzer), each
# target for a bounded time.
#
#   tests/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s each for envelopes, cursor, outbound, socketio
#
# Targets live in fuzz/fuzz_targets/: `envelopes` (client bodies and frames: envelope and batch
# parsing under limits), `cursor` (sids and cursors) and `outbound` (the encoder: envelopes,
# poll batches, SSE frames and chunks read back by independent readers) and `socketio` (the
# Engine.IO and Socket.IO packet parsers of `/socket.io/`, and events written back by the encoder). A finding stops the
# run with the input saved under fuzz/artifacts/TARGET/; reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...` and turn it into a
# regression test in src/protocol/mod.rs (src/protocol/encode.rs for `outbound`, src/transport/socketio/packet.rs for `socketio`). The corpus
# grows in fuzz/corpus/TARGET/ (not committed).
#
# Without cargo-fuzz, `cargo build` in fuzz/ still builds every target on a stable toolchain
# (uninstrumented, so only a check that the targets compile).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelopes cursor outbound socketio)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); this lets a stable toolchain
# accept them.
export RUSTC_BOOTSTRAP=1

# A few well-formed inputs so the fuzzer starts from the shapes that matter. The envelopes
# target reads its first byte as the tight limits to try, hence the leading byte.
seed() {
  local dir="corpus/$1"; shift
  mkdir -p "$dir"
  local i=0
  for input in "$@"; do
    printf '%s' "$input" > "$dir/seed-$i"
    i=$((i + 1))
  done
}
seed envelopes \
  'x{"event":"message","data":"hello"}' \
  'x[{"event":"a","data":1},{"event":"b"}]' \
  'x{"event":"echo","data":{"n":[1,[2,{"x":null}]]},"seq":7,"id":"AAAAAAAAAAAAAAAAAAAAAA.3"}' \
  'x[{"event":"a\u0001"},{"event":""},{"data":1}]'
seed cursor \
  'f8tQsHY6kkg4J-FuzZPBsw' \
  'f8tQsHY6kkg4J-FuzZPBsw.0~' \
  'f8tQsHY6kkg4J-FuzZPBsw.18446744073709551615' \
  '12~'
# The outbound target reads its input as events (arbitrary's reading: a sid's 22 bytes, a
# number, flags, then name and data, their lengths read from the end), so these only give it
# a start: line breaks and characters that need escaping.
seed outbound \
  $'f8tQsHY6kkg4J-FuzZPBsw\x07\x01\x01\x01\x01\x01\x01\x01\x01\x01message{"a":\n[1,\r\n"x"]}\x07' \
  $'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAquote"and\\slash"line\rbreak"\r\n\x10\x20' \
  $'0123456789abcdefghijkl-_~~~~~~~~~~~~~~~~ \xe2\x98\x83 \n\n\n{}[]null'
seed socketio \
  '40{"token":"abc"}' \
  $'42["message","hello"]\x1e3\x1e42["echo",{"a":[1,2]}]' \
  '2/admin,12["x",1,2]' \
  $'451-["up",{"_placeholder":true,"num":0}]\x1ebAQID' \
  '313[{"ok":true}]'

for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run "$target" -- -max_total_time="$seconds" -dict="$target.dict" -print_final_stats=1
done
