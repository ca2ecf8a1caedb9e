#!/usr/bin/env bash
# The benchmark harness: the shim against nginx doing the same job and against no proxy at all,
# on loopback, with the pinning and alternation of ../shared/guides/benchmarks.md.
#
#   bench/run.sh [--short] [--rounds N] [--secs S] [--only 1458|1,10,11,a] [--keep]
#
# Scenarios 1 to 11 and "a", the allocation pass (allocations per request, from a second shim
# built with --features count-allocations into target/alloc; the timed scenarios use the normal
# target/release binary). Default: all of them.
# --short: a smoke test, 2 rounds of 1 s runs and smaller memory scenarios (~3 min once built).
# It installs nothing: it names what is missing, with the command to get it, and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { # need COMMAND DEBIAN-PACKAGE [ALTERNATIVE-PATH]
    command -v "$1" >/dev/null 2>&1 || { [ -n "${3:-}" ] && [ -x "$3" ]; } || missing+=("$2")
}
need wrk wrk
need nginx nginx /usr/sbin/nginx
need h2load nghttp2-client
need curl curl
need taskset util-linux
need python3 python3
need openssl openssl
if ((${#missing[@]})); then
    echo "bench/run.sh: missing tools: ${missing[*]}" >&2
    echo "install them with: apt-get install -y ${missing[*]}" >&2
    exit 2
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "bench/run.sh: cargo is missing (install Rust from rustup.rs)" >&2
    exit 2
fi
if [ "$(nproc --all)" -lt 2 ] || ! taskset -c 1 true 2>/dev/null; then
    echo "bench/run.sh: needs CPUs 0 and 1 (the proxy on one, load and upstream on the other)" >&2
    exit 2
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# Is the allocation pass ("a") selected? It is unless --only leaves it out.
want_alloc=1
prev=
for arg in "$@"; do
    case "$prev" in --only) [[ "$arg" == *a* ]] || want_alloc=0 ;; esac
    case "$arg" in --only=*) [[ "${arg#--only=}" == *a* ]] || want_alloc=0 ;; esac
    prev=$arg
done

echo "building (release)..." >&2
cargo build --release --workspace --quiet
alloc=()
if ((want_alloc)); then
    # Its own target dir: the feature must never end up in target/release/rocketchat-shim.
    echo "building (release, count-allocations, target/alloc)..." >&2
    cargo build --release -p rocketchat-shim --bin rocketchat-shim --features count-allocations \
        --target-dir target/alloc --quiet
    alloc=(--alloc-shim target/alloc/release/rocketchat-shim)
fi
loadgen=$(cargo bench --bench loadgen --no-run --message-format=json --quiet 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "loadgen" and m.get("executable"):
        print(m["executable"])')
if [ -z "$loadgen" ]; then
    echo "bench/run.sh: could not build the loadgen helper (cargo bench --bench loadgen --no-run)" >&2
    exit 1
fi

exec python3 bench/harness.py \
    --shim target/release/rocketchat-shim \
    --standin target/release/rocketchat-standin \
    --loadgen "$loadgen" \
    --nginx "$nginx_bin" \
    "${alloc[@]}" \
    "$@"
