#!/usr/bin/env bash
# The one test command of rocketchat-shim (the README quick start and .ci/run call it).
#
#   bash scripts/test.sh          # from any directory
#
# Steps, in order; the first failure stops the script with a non-zero status:
#   0. install Debian's redis-server / redis-tools when missing (tests/redis.rs needs them) and
#      haproxy (tests/proxy_protocol.rs starts one as a send-proxy-v2 sender)
#   1. cargo build --workspace --bins   (the shim and the stand-in Rocket.Chat)
#   2. cargo test --workspace
#   3. (reserved for more suites, e.g. redis / nginx: see the marked section below)
#   4. real-client tests: tests/clients/ run once per PyPI rocketchat_API version, each in its
#      own venv under .venv/ (git-ignored), made and filled on first use:
#        .venv/rc371  pytest + rocketchat_API==3.7.1  (dm_messages_others, paginating)
#        .venv/rc300  pytest + rocketchat_API==3.0.0  (im_messages_others)
#      RC_API_EXPECT tells each run which client it must find. A run that fails, collects no
#      test (pytest status 5) or skips a test fails the script. Last line:
#        python-clients: N passed, 0 failed
#
# Environment (for developing only; the default runs everything):
#   SKIP_CARGO_TEST=1   skip step 2 (the build of step 1 still runs: the client tests need it)
#   PYTHON=python3.11   the Python that makes the venvs (default: python3)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

say() { printf '\n== %s\n' "$*"; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 \
  || die "cargo not found on PATH: install the Rust toolchain (https://rustup.rs) and re-run"

# System packages the Rust tests need: Debian's redis-server (tests/redis.rs starts real ones on
# free loopback ports) with redis-cli. Installed when missing; a failure to install stops here.
need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_pkgs+=(redis-tools)
# HAProxy: tests/proxy_protocol.rs starts one as a real send-proxy-v2 sender.
command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
# openssl makes a PKCS#1 key for tests/tls_listener.rs; chattr (e2fsprogs) and prlimit
# (util-linux) make an audit trail unwritable or unable to grow in tests/audit_*.rs.
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v chattr >/dev/null 2>&1 || need_pkgs+=(e2fsprogs)
command -v prlimit >/dev/null 2>&1 || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
  say "installing ${need_pkgs[*]} (Debian packages)"
  command -v apt-get >/dev/null 2>&1 \
    || die "missing ${need_pkgs[*]} and no apt-get: install them (Debian: apt-get install ${need_pkgs[*]})"
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
    || die "apt-get install ${need_pkgs[*]} failed"
  # The package starts a system-wide instance on 6379; the tests start their own.
  command -v systemctl >/dev/null 2>&1 && $SUDO systemctl stop redis-server >/dev/null 2>&1 || true
  command -v systemctl >/dev/null 2>&1 && $SUDO systemctl stop haproxy >/dev/null 2>&1 || true
fi

say "cargo build --workspace --bins"
cargo build --workspace --bins

if [[ "${SKIP_CARGO_TEST:-0}" == 1 ]]; then
  say "cargo test --workspace: SKIPPED (SKIP_CARGO_TEST=1)"
else
  say "cargo test --workspace"
  cargo test --workspace
fi

# ---------------------------------------------------------------------------------------------
# >>> More test steps go here (e.g. a redis section for rate_limit.backend = "redis", an nginx
# >>> section for trusted_proxies). Keep them before the Python clients, so that the summary line
# >>> below stays the last line of the output.
# ---------------------------------------------------------------------------------------------

# ---- real Python clients -----------------------------------------------------------------------
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die "$PY not found on PATH: the client tests need Python 3 with venv and pip"

# The binaries the client tests start: wherever cargo put them (CARGO_TARGET_DIR is honoured).
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
  | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export ROCKETCHAT_SHIM_BIN="$TARGET_DIR/debug/rocketchat-shim"
export ROCKETCHAT_STANDIN_BIN="$TARGET_DIR/debug/rocketchat-standin"
for b in "$ROCKETCHAT_SHIM_BIN" "$ROCKETCHAT_STANDIN_BIN"; do
  [[ -x "$b" ]] || die "$b missing after the build"
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# venv DIR VERSION: makes DIR (or remakes a broken one) holding pytest + rocketchat_API==VERSION.
venv() {
  local dir=$1 version=$2
  if [[ -d "$dir" ]] && ! "$dir/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "$dir is broken (its Python does not start): making it again"
    rm -rf "$dir"
  fi
  if [[ ! -d "$dir" ]]; then
    echo "making $dir"
    "$PY" -m venv "$dir" || die "'$PY -m venv $dir' failed (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if ! "$dir/bin/python" - "$version" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, sys
assert m.version("rocketchat_API") == sys.argv[1]
m.version("pytest")
EOF
  then
    echo "installing pytest and rocketchat_API==$version into $dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
      pytest "rocketchat_API==$version" \
      || die "pip install into $dir failed"
  fi
}

passed=0 failed=0 skipped=0 bad_runs=()

# clients VENV VERSION: runs tests/clients with that venv; adds its counts to the totals.
clients() {
  local dir=$1 version=$2 xml="$WORK/$(basename "$1").xml" status
  say "python clients: rocketchat_API $version ($dir)"
  venv "$dir" "$version"
  status=0
  RC_API_EXPECT=$version "$dir/bin/python" -m pytest tests/clients -q -p no:cacheprovider \
    --junitxml="$xml" || status=$?
  if [[ $status -eq 5 ]]; then
    echo "rocketchat_API $version: pytest collected no tests: counted as a failure"
  fi
  local counts
  if [[ -s "$xml" ]]; then
    counts=$("$PY" - "$xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = lambda k: sum(int(s.get(k, 0)) for s in suites)
tests, fail, err, skip = n("tests"), n("failures"), n("errors"), n("skipped")
print(tests - fail - err - skip, fail + err, skip)
EOF
    )
  else
    counts="0 0 0"
  fi
  local p f s
  read -r p f s <<<"$counts"
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  if [[ $status -ne 0 || $f -ne 0 || $s -ne 0 || $p -eq 0 ]]; then
    bad_runs+=("rocketchat_API $version (pytest status $status)")
  fi
}

clients "$ROOT/.venv/rc371" 3.7.1
clients "$ROOT/.venv/rc300" 3.0.0

echo
if [[ ${#bad_runs[@]} -ne 0 ]]; then
  echo "failed runs: ${bad_runs[*]}"
  if [[ $skipped -ne 0 ]]; then
    echo "(no client test may skip: a skip means something the suite needs is missing)"
  fi
  # Keep the summary as the last line even when failing; make sure a failing run never
  # reads as "0 failed".
  if [[ $failed -eq 0 ]]; then failed=${#bad_runs[@]}; fi
  extra=""
  if [[ $skipped -ne 0 ]]; then extra=", $skipped skipped"; fi
  echo "python-clients: $passed passed, $failed failed$extra"
  exit 1
fi
echo "python-clients: $passed passed, $failed failed"
