#!/usr/bin/env bash
# WebSocket transparency: the Autobahn TestSuite's fuzzing-client cases, driven by PyPI
# `kosoku` (a Python 3 runner of Autobahn's own case files), run twice against the stand-in
# Rocket.Chat's WebSocket echo on /websocket: once directly, once through rocketchat-shim.
# A transparent tunnel changes nothing, so every case must end the same way both times
# (message verdict, close verdict, close code).
#
#   bash scripts/autobahn.sh                 # the whole suite (about 500 cases)
#   AUTOBAHN_CASES="1.* 2.* 5.*" bash scripts/autobahn.sh   # a selection (kosoku globs)
#
# Makes .venv/autobahn (git-ignored) with kosoku on first use, builds the two binaries,
# starts them on free loopback ports, and stops them on exit. Last line:
#   autobahn: N passed, M failed
# where a case passes when its outcome through the shim equals its outcome direct. Exits
# non-zero on any difference, or if no case ran. Reports (JSON per case) go to
# target/autobahn/{direct,shim}/.
#
# Environment: PYTHON (default python3) makes the venv; AUTOBAHN_PARALLEL (default 2) runs
# that many cases at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

die() { printf 'scripts/autobahn.sh: %s\n' "$*" >&2; exit 1; }

PY=${PYTHON:-python3}
VENV=$ROOT/.venv/autobahn
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import kosoku' >/dev/null 2>&1; then
  rm -rf "$VENV"
fi
if [[ ! -d "$VENV" ]]; then
  echo "making $VENV with kosoku"
  "$PY" -m venv "$VENV" || die "'$PY -m venv' failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check kosoku \
    || die "pip install kosoku failed"
fi

echo "== cargo build --workspace --bins"
. scripts/pair.sh
start_pair ""

DIRECT_URL="ws://${UPSTREAM#http://}/websocket"
SHIM_URL="ws://$SHIM/websocket"
echo "direct: $DIRECT_URL"
echo "shim:   $SHIM_URL (upstream $UPSTREAM)"

mkdir -p "$TARGET_DIR/autobahn"
"$VENV/bin/python" - "$DIRECT_URL" "$SHIM_URL" "$TARGET_DIR/autobahn" \
  "${AUTOBAHN_CASES:-}" "${AUTOBAHN_PARALLEL:-2}" <<'EOF'
import asyncio, json, os, sys, time
from collections import Counter

from kosoku import FailureError, run_fuzzingclient

direct_url, shim_url, outdir, cases, parallel = sys.argv[1:6]
cases = cases.split() or None
parallel = int(parallel)


async def run(url):
    try:
        return await run_fuzzingclient(url, cases, concurrency=parallel)
    except FailureError as failure:  # some cases are not OK: the results are still all there
        return failure.results


def outcome(r):
    return (r.behavior.value, r.behavior_close.value, r.remote_close_code)


def save(name, results):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(
            {r.case_id: {"behavior": r.behavior.value, "behaviorClose": r.behavior_close.value,
                         "remoteCloseCode": r.remote_close_code, "duration": r.duration,
                         "result": r.result, "resultClose": r.result_close}
             for r in results}, f, indent=1, sort_keys=True)


runs = {}
for name, url in (("direct", direct_url), ("shim", shim_url)):
    t = time.monotonic()
    results = asyncio.run(run(url))
    runs[name] = {r.case_id: r for r in results}
    save(name, results)
    verdicts = Counter(r.behavior.value for r in results)
    print(f"{name}: {len(results)} cases in {time.monotonic() - t:.1f} s; "
          + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))

direct, shim = runs["direct"], runs["shim"]
ids = sorted(set(direct) | set(shim), key=lambda c: [int(x) if x.isdigit() else x for x in c.split(".")])
passed = failed = 0
for case in ids:
    a, b = direct.get(case), shim.get(case)
    if a is not None and b is not None and outcome(a) == outcome(b):
        passed += 1
    else:
        failed += 1
        print(f"DIFFERENT {case}: direct {outcome(a) if a else None} / shim {outcome(b) if b else None}")
        if b is not None:
            print(f"  shim: {b.result} / {b.result_close}")
if not ids:
    print("no case ran")
    failed = max(failed, 1)
print(f"autobahn: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
