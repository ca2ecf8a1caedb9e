# Sourced by scripts that need the stand-in Rocket.Chat with rocketchat-shim in front of it
# (bench/slowloris.sh, scripts/autobahn.sh). The caller defines `die` first, then calls
#   start_pair 'header_read_timeout = "2s"'     # extra [server] lines for the shim, may be ""
# which builds the debug binaries and sets TARGET_DIR, WORK (removed on exit), UPSTREAM
# (http://ADDR of the stand-in), SHIM (ADDR of the shim) and SHIM_PID; every process it starts
# is stopped on exit.

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_line FILE PATTERN: waits (10 s at most) until FILE has a line matching PATTERN.
wait_line() {
  for _ in $(seq 1 200); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  cat "$1" >&2
  die "no line matching '$2' in $1"
}

start_pair() {
  cargo build --quiet --workspace --bins
  "$TARGET_DIR/debug/rocketchat-standin" --listen 127.0.0.1:0 >"$WORK/standin.out" 2>&1 &
  PIDS+=($!)
  wait_line "$WORK/standin.out" 'listening on http://'
  UPSTREAM=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/standin.out" | head -n1)
  cat >"$WORK/shim.toml" <<TOML
[server]
listen = "127.0.0.1:0"
$1
[admin]
listen = ""
[upstream]
url = "$UPSTREAM"
TOML
  RUST_LOG=info "$TARGET_DIR/debug/rocketchat-shim" --config "$WORK/shim.toml" >"$WORK/shim.out" 2>&1 &
  SHIM_PID=$!
  PIDS+=($SHIM_PID)
  wait_line "$WORK/shim.out" 'rocketchat-shim listening'
  SHIM=$(grep 'rocketchat-shim listening' "$WORK/shim.out" | head -n1 \
    | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["addr"])')
}
