#!/usr/bin/env bash
# Slowloris against rocketchat-shim with Debian's slowhttptest: ~300 connections that send
# their request heads a header line at a time, for ~10 s, while a normal client keeps asking
# for /api/info every 100 ms. The shim (header_read_timeout = 2s) must cut the slow
# connections and keep serving the normal requests.
#
#   bash bench/slowloris.sh          # needs slowhttptest and curl (apt-get install -y slowhttptest curl)
#
# Environment: SLOW_CONNS (300), SLOW_SECS (10), HEADER_TIMEOUT (2s).
# Prints a summary; exits non-zero if a normal request failed or took over 1 s, or if
# slowhttptest judged the service unavailable. (tests/hostile.rs runs the same attack, written
# in Rust, on every `cargo test`.)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'bench/slowloris.sh: %s\n' "$*" >&2; exit 1; }
command -v slowhttptest >/dev/null || die "slowhttptest not found: apt-get install -y slowhttptest"
command -v curl >/dev/null || die "curl not found: apt-get install -y curl"

CONNS=${SLOW_CONNS:-300}
SECS=${SLOW_SECS:-10}
HEADER_TIMEOUT=${HEADER_TIMEOUT:-2s}

. scripts/pair.sh
start_pair "header_read_timeout = \"$HEADER_TIMEOUT\""
echo "shim on $SHIM (header_read_timeout $HEADER_TIMEOUT), upstream $UPSTREAM"

# The attack: slow headers, a follow-up line every second, all connections opened at once.
slowhttptest -H -c "$CONNS" -r "$CONNS" -i 1 -l "$SECS" -x 24 -p 3 \
  -u "http://$SHIM/api/info" -g -o "$WORK/slow" >"$WORK/slowhttptest.out" 2>&1 &
SLOW_PID=$!
PIDS+=($SLOW_PID)

# Normal traffic meanwhile.
ok=0 failed=0 slowest=0
end=$((SECONDS + SECS))
sleep 1
while ((SECONDS < end)); do
  out=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}' "http://$SHIM/api/info" || echo "000 5")
  read -r code secs <<<"$out"
  ms=$(awk -v s="$secs" 'BEGIN { printf "%d", s * 1000 }')
  if [[ $code == 200 && $ms -lt 1000 ]]; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "normal request: $code in ${ms} ms"; fi
  ((ms > slowest)) && slowest=$ms
  sleep 0.1
done
wait "$SLOW_PID" || true

# slowhttptest's own statistics: seconds, closed, pending, connected, service available.
stats=$(python3 - "$WORK/slow.csv" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))[1:]
rows = [r for r in rows if len(r) >= 5]
connected = max(int(r[3]) for r in rows) if rows else 0
closed = max(int(r[1]) for r in rows) if rows else 0
# The last column is non-zero while slowhttptest's probe request gets an answer.
unavailable = sum(1 for r in rows if r[4].strip() == "0")
print(connected, closed, unavailable, len(rows))
EOF
) || stats="0 0 0 0"
read -r max_connected closed unavailable ticks <<<"$stats"
verdict=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/slowhttptest.out" | grep -iE 'service available' | tail -n1 \
  | tr -s ' ' || true)
alive=$(kill -0 "$SHIM_PID" 2>/dev/null && echo yes || echo no)

echo
echo "| what                                  | value |"
echo "|---------------------------------------|------:|"
printf '| slow connections asked for            | %5s |\n' "$CONNS"
printf '| most slow connections open at once    | %5s |\n' "$max_connected"
printf '| slow connections closed by the shim   | %5s |\n' "$closed"
printf '| seconds its probe found no service    | %5s |\n' "$unavailable"
printf '| normal requests served (200, < 1 s)   | %5s |\n' "$ok"
printf '| normal requests failed                | %5s |\n' "$failed"
printf '| slowest normal request (ms)           | %5s |\n' "$slowest"
printf '| shim still running                    | %5s |\n' "$alive"
echo "slowhttptest: ${verdict:-no verdict line}"

status=0
[[ $failed -eq 0 && $ok -gt 0 ]] || { echo "FAIL: normal requests failed"; status=1; }
[[ $alive == yes ]] || { echo "FAIL: the shim died"; status=1; }
[[ $unavailable -eq 0 ]] || { echo "FAIL: slowhttptest found the service unavailable"; status=1; }
[[ $closed -gt 0 ]] || { echo "FAIL: no slow connection was cut"; status=1; }
echo "slowloris: $ok passed, $failed failed"
exit $status
