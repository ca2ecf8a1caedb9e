#!/usr/bin/env python3
"""The benchmark harness behind bench/run.sh (standard library only).

Method (../shared/guides/benchmarks.md): the proxy under test (the shim with one worker
thread, or nginx with `worker_processes 1`) pinned to CPU 0; the load generator and the
upstream pinned to CPU 1; loopback only. Every scenario alternates its contenders (nginx,
shim, direct = no proxy) over several rounds, rotating the order each round, and reports
medians and the spread ((max - min) / median). Any socket error or unexpected status in a
measured run voids the whole run: no table is printed and the exit status is 1.

The stand-in upstream records every request in memory, so it is restarted before every
measurement: each contender meets the same, empty upstream.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

PROXY_CPU = "0"
LOAD_CPU = "1"
ADMIN_HEADERS = ["X-User-Id: admin-id", "X-Auth-Token: admin-token"]
ENDPOINT = "/api/v1/im.messages.others?roomId=alice-idbob-id"
SMALL = "/_standin/bytes/1024"
BIG_BYTES = 100 * 1024 * 1024


class Void(Exception):
    """A measured run had errors: the whole run is void."""


# ---------------------------------------------------------------------------------------
# processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Proc:
    """A process pinned with taskset; its output goes to a log file."""

    def __init__(self, tmp, name, argv, cpu, ready=None, port=None, env=None, stdin=None):
        self.name = name
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.log_start = self.log.tell()  # the log is appended to across restarts
        self.p = subprocess.Popen(
            ["taskset", "-c", cpu] + argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        end = time.time() + 15
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{self.tail()}")
            if ready and re.search(ready, self.read_log()):
                break
            if port and not ready and wait_port(port, 0.1):
                break
            if time.time() > end:
                self.stop()
                raise RuntimeError(f"{name} did not become ready:\n{self.tail()}")
            time.sleep(0.02)

    @property
    def pid(self):
        return self.p.pid  # taskset execs the program: same pid

    def read_log(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def tail(self, n=20):
        return "\n".join(self.read_log().splitlines()[-n:])

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def proc_status(pid, field):
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    """Resets VmHWM to the current RSS (clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


TICK = os.sysconf("SC_CLK_TCK")


class Contender:
    """A proxy (or none) that a scenario measures: its base port and the pid to watch."""

    def __init__(self, name, port, pid=None, h2port=None):
        self.name, self.port, self.pid, self.h2port = name, port, pid, h2port


class Standin:
    """The stand-in Rocket.Chat, restarted before each measurement."""

    def __init__(self, tmp, binary):
        self.tmp, self.binary, self.port, self.proc = tmp, binary, free_port(), None

    def restart(self):
        if self.proc:
            self.proc.stop()
        self.proc = Proc(
            self.tmp,
            "standin",
            [self.binary, "--listen", f"127.0.0.1:{self.port}"],
            LOAD_CPU,
            ready=r"rocketchat-standin listening on",
        )

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None


# ---------------------------------------------------------------------------------------
# configurations

NGINX_CONF = """\
# The nginx baseline of ../shared/guides/benchmarks.md; lines marked `bench:` are additions
# needed to run it in a temporary directory and for the scenarios (see bench/README.md).
worker_processes 1;
{user}pid {dir}/nginx.pid;                          # bench
error_log {dir}/error.log warn;                    # bench
{rlimit}events {{ worker_connections {wc}; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;                 # bench
  proxy_temp_path {dir}/proxy;                      # bench
  fastcgi_temp_path {dir}/fastcgi;                  # bench
  uwsgi_temp_path {dir}/uwsgi;                      # bench
  scgi_temp_path {dir}/scgi;                        # bench
  client_max_body_size 0;                           # bench: the 100 MB upload (default 1m)
  keepalive_requests 1000000;                       # bench: h2load -D does not reconnect after 1000
  upstream rc {{ server 127.0.0.1:{up}; keepalive 64; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  proxy_cache_path {dir}/cache keys_zone=rc_cache:10m max_size=64m inactive=10m use_temp_path=off;
  limit_req_zone $http_x_user_id zone=rc_rl:10m rate={rate};
  limit_req_log_level info;                         # bench: no error-log line per 429 (the shim logs none)
  server {{
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{h2port} http2;                # bench: h2c with prior knowledge (nginx < 1.25)
{tls}    proxy_http_version 1.1;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Host $host;
    location ~ ^/api/v1/(im|dm)\\.messages\\.others$ {{
      proxy_cache rc_cache; proxy_cache_key "$http_x_user_id|$args";
      proxy_cache_valid 200 5s; proxy_cache_lock on; proxy_ignore_headers Cache-Control;
      limit_req zone=rc_rl burst={burst} nodelay; limit_req_status 429;
      proxy_pass http://rc;
    }}
    location / {{ proxy_pass http://rc; proxy_buffering off; proxy_request_buffering off; }}
  }}
}}
"""

SHIM_CONF = """\
[server]
listen = "127.0.0.1:{port}"
max_connections = 20000
shutdown_grace = "1s"
{trusted}
{tls}
[admin]
listen = "127.0.0.1:{admin}"
[upstream]
url = "http://127.0.0.1:{up}"
[policy]
dm_history_endpoint = "enabled"
roles = ["admin"]
identity_ttl = "10m"
[cache]
ttl = "5s"
[rate_limit]
per_user = {{ requests = {user_n}, per = "{user_per}" }}
per_ip = {{ requests = {ip_n}, per = "{ip_per}" }}
{extra}
"""

# Scenario 10: the audit trail on (one file per shim, in the run's temporary directory).
AUDIT_CONF = """[audit]
enabled = true
path = "{path}"
instance = "bench"
fsync = "{fsync}"
"""

# nginx's proxy_cache_valid is 5 s; the shim's cache ttl is the same. Limits that never refuse
# (both proxies still do the bookkeeping) except in the 429 scenario, where both use the
# guide's 10 requests a minute with a burst of 10.
UNLIMITED = dict(user_n=1_000_000_000, user_per="1s", ip_n=1_000_000_000, ip_per="1s")
# nginx's limit_req counts in milliseconds: within one millisecond every request adds to the
# excess whatever the rate, so a burst of 10 refuses the 12th request of any millisecond. The
# scenarios that must not be limited use a burst no millisecond reaches.
NGINX_UNLIMITED_RATE = "1000000r/s"
NGINX_UNLIMITED_BURST = 1000000


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="rcshim-bench-")
        os.chmod(self.tmp, 0o755)
        self.standin = Standin(self.tmp, args.standin)
        self.procs = []
        self.results = {}  # (scenario, contender) -> list of dicts
        self.extra = {}
        self.errors = []
        self.seq = 0

    # ---- instances

    def nginx(self, up_port, rate=NGINX_UNLIMITED_RATE, burst=NGINX_UNLIMITED_BURST, wc=4096, nofile=None,
              tls=None):
        self.seq += 1
        d = os.path.join(self.tmp, f"nginx{self.seq}")
        os.makedirs(d)
        port, h2port = free_port(), free_port()
        tls_port = free_port() if tls else None
        tls_conf = ""
        if tls:
            # bench: scenario 9, the shim's certificate and protocols on a TLS listener
            tls_conf = (f"    listen 127.0.0.1:{tls_port} ssl;                 # bench: scenario 9\n"
                        f"    ssl_certificate {tls[0]};                       # bench\n"
                        f"    ssl_certificate_key {tls[1]};                   # bench\n"
                        "    ssl_protocols TLSv1.2 TLSv1.3;                  # bench\n")
        conf = NGINX_CONF.format(
            tls=tls_conf,
            user="user root;                                  # bench: run as root in a temp dir\n"
            if os.geteuid() == 0
            else "",
            rlimit=f"worker_rlimit_nofile {nofile};                # bench: idle tunnels\n"
            if nofile
            else "",
            dir=d,
            wc=wc,
            up=up_port,
            rate=rate,
            burst=burst,
            port=port,
            h2port=h2port,
        )
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        proc = Proc(
            self.tmp,
            f"nginx{self.seq}",
            [self.args.nginx, "-p", d, "-c", path, "-g", "daemon off;"],
            PROXY_CPU,
            port=port,
        )
        self.procs.append(proc)
        if not wait_port(h2port):
            raise RuntimeError("nginx h2 port not ready")
        worker = self.nginx_worker(proc.pid)
        c = Contender("nginx", port, worker, h2port)
        c.tls_port = tls_port
        return c, proc

    @staticmethod
    def nginx_worker(master):
        for _ in range(100):
            try:
                with open(f"/proc/{master}/task/{master}/children") as f:
                    kids = f.read().split()
                for k in kids:  # not the cache manager or loader
                    with open(f"/proc/{k}/cmdline", "rb") as f:
                        if b"worker process" in f.read():
                            return int(k)
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nginx worker not found")

    def shim(self, up_port, trusted=False, tls=None, extra="", **limits):
        self.seq += 1
        lim = dict(UNLIMITED)
        lim.update(limits)
        port, admin = free_port(), free_port()
        conf = SHIM_CONF.format(
            port=port,
            admin=admin,
            up=up_port,
            trusted='trusted_proxies = ["127.0.0.0/8"]' if trusted else "",
            tls=f'[server.tls]\ncert_file = "{tls[0]}"\nkey_file = "{tls[1]}"' if tls else "",
            extra=extra,
            **lim,
        )
        path = os.path.join(self.tmp, f"shim{self.seq}.toml")
        with open(path, "w") as f:
            f.write(conf)
        env = dict(os.environ, RUST_LOG="warn")
        proc = Proc(
            self.tmp,
            f"shim{self.seq}",
            [self.args.shim, "--config", path, "--workers", "1"],
            PROXY_CPU,
            port=port,
            env=env,
        )
        self.procs.append(proc)
        c = Contender("shim", port, proc.pid, port)
        c.admin = admin
        c.tls_port = port if tls else None
        return c, proc

    def metrics(self, admin_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def stop(self, *procs):
        for p in procs:
            p.stop()
            if p in self.procs:
                self.procs.remove(p)

    def cleanup(self):
        for p in list(self.procs):
            p.stop()
        self.standin.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- bookkeeping

    def record(self, scenario, contender, **r):
        self.results.setdefault((scenario, contender), []).append(r)

    def fail(self, scenario, contender, what):
        msg = f"scenario {scenario} / {contender}: {what}"
        print(f"  ERROR {msg}", flush=True)
        self.errors.append(msg)

    def rounds(self, contenders):
        """Yields (round, contender) with the order rotated each round."""
        n = len(contenders)
        for r in range(self.args.rounds):
            k = r % n
            for c in contenders[k:] + contenders[:k]:
                yield r, c

    def run(self, argv, timeout=None, cpu=LOAD_CPU):
        r = subprocess.run(
            ["taskset", "-c", cpu] + argv,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return r

    def measure(self, contender, fn):
        """Runs `fn()` with peak RSS reset and CPU time counted for the proxy and upstream."""
        pid = contender.pid
        up = self.standin.proc.pid if self.standin.proc else None
        if pid:
            reset_peak(pid)
            rss0 = proc_status(pid, "VmRSS")
            t0 = cpu_ticks(pid)
        u0 = cpu_ticks(up) if up else 0
        w0 = time.time()
        out = fn()
        wall = time.time() - w0
        m = {}
        if pid:
            m["rss0_kb"] = rss0
            m["hwm_kb"] = proc_status(pid, "VmHWM")
            m["cpu"] = (cpu_ticks(pid) - t0) / TICK / wall
        if up:
            m["up_cpu"] = (cpu_ticks(up) - u0) / TICK / wall
        return out, m

    # ---- load tools

    def wrk(self, port, path, headers=(), secs=None, scheme="http"):
        argv = ["wrk", "-t1", "-c32", f"-d{secs}s", "--latency"]
        for h in headers:
            argv += ["-H", h]
        argv.append(f"{scheme}://127.0.0.1:{port}{path}")
        r = self.run(argv, timeout=secs + 30)
        return parse_wrk(r.stdout + r.stderr)

    def h2load(self, port, path, secs, warm):
        log = os.path.join(self.tmp, "h2load.log")
        if os.path.exists(log):
            os.remove(log)
        argv = [
            "h2load", "-t1", "-c4", "-m8", f"-D{secs}", f"--warm-up-time={warm}",
            f"--log-file={log}", f"http://127.0.0.1:{port}{path}",
        ]
        r = self.run(argv, timeout=secs + warm + 30)
        return parse_h2load(r.stdout + r.stderr, log)

    def loadgen(self, *args, timeout=600):
        r = self.run([self.args.loadgen] + list(args), timeout=timeout)
        if r.returncode != 0:
            raise Void(f"loadgen {args[0]} failed: {r.stderr.strip()}")
        return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# parsers


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v.strip())
    if not m:
        return None
    x, u = float(m.group(1)), m.group(2)
    return x * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def parse_wrk(text):
    out = {"raw": text}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rate"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        out[f"p{p}"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    if out["requests"] == 0:
        out["socket_errors"] += 1  # nothing ran at all
    return out


def parse_h2load(text, log):
    out = {"raw": text}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    out["rate"] = float(m.group(1)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, _, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        out["requests"] = done
        out["socket_errors"] = errored + timeout
        out["non2xx"] = failed
    else:
        out["requests"], out["socket_errors"], out["non2xx"] = 0, 1, 0
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["non2xx"] += sum(int(x) for x in m.groups()[1:])
    lat = []
    try:
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000.0)
    except OSError:
        pass
    lat.sort()
    out["p50"] = pct(lat, 0.50)
    out["p99"] = pct(lat, 0.99)
    return out


def pct(sorted_values, p):
    if not sorted_values:
        return None
    i = round((len(sorted_values) - 1) * p)
    return sorted_values[min(i, len(sorted_values) - 1)]


# ---------------------------------------------------------------------------------------
# scenarios


def http_rounds(b, scenario, contenders, path, headers=(), expect="2xx", h2=False, tls=False):
    """A throughput scenario: warm up, measure, for each contender, over the rounds."""
    a = b.args
    scheme = "https" if tls else "http"
    for r, c in b.rounds(contenders):
        b.standin.restart()
        port = c.tls_port if tls else c.h2port if h2 else c.port
        if h2:
            if not a.short:
                b.h2load(port, path, a.warm, 0)  # pools warm before the measured run's own warm-up
            res, m = b.measure(c, lambda: b.h2load(port, path, a.secs, a.warm))
        else:
            b.wrk(port, path, headers, a.warm, scheme)
            res, m = b.measure(c, lambda: b.wrk(port, path, headers, a.secs, scheme))
        bad = res["socket_errors"]
        if expect == "2xx":
            bad += res["non2xx"]
        elif expect == "429":
            # The budget lets a few through (burst 10, then 10 a minute); everything else
            # must be refused.
            if res["requests"] - res["non2xx"] > 50:
                b.fail(scenario, c.name, f"{res['requests'] - res['non2xx']} requests were not refused")
        if bad or res["requests"] == 0:
            b.fail(scenario, c.name, f"round {r + 1}: {res['socket_errors']} socket errors, "
                   f"{res['non2xx']} non-2xx of {res['requests']}\n{res['raw'][-600:]}")
        print(f"  round {r + 1} {c.name:6} {res['rate']:>10.0f} req/s  p50 {fmt_ms(res['p50'])}  "
              f"p99 {fmt_ms(res['p99'])}  proxy cpu {m.get('cpu', 0) * 100:.0f}%  "
              f"upstream cpu {m.get('up_cpu', 0) * 100:.0f}%", flush=True)
        b.record(scenario, c.name, rate=res["rate"], p50=res["p50"], p99=res["p99"], **m)


def s1_passthrough(b):
    print("\n== 1 pass-through GET, 1 KB (wrk -t1 -c32)", flush=True)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port)
    sh, shp = b.shim(b.standin.port)
    direct = Contender("direct", b.standin.port)
    http_rounds(b, "1", [ng, sh, direct], SMALL)
    b.stop(ngp, shp)


def s3_h2(b):
    print("\n== 3 HTTP/2 (h2c prior knowledge), 1 KB GET (h2load -t1 -c4 -m8)", flush=True)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port)
    sh, shp = b.shim(b.standin.port)
    direct = Contender("direct", b.standin.port, None, b.standin.port)
    http_rounds(b, "3", [ng, sh, direct], SMALL, h2=True)
    b.stop(ngp, shp)


def s4_cache_hit(b):
    print("\n== 4 intercepted endpoint, cache hit (admin, identity cached; nginx proxy_cache)", flush=True)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port)
    sh, shp = b.shim(b.standin.port)
    direct = Contender("direct", b.standin.port)
    http_rounds(b, "4", [ng, sh, direct], ENDPOINT, ADMIN_HEADERS)
    # The upstream must have been idle while the proxies answered from their caches.
    for name in ("nginx", "shim"):
        for r in b.results.get(("4", name), []):
            if r.get("up_cpu", 0) > 0.10:
                b.fail("4", name, f"upstream busy ({r['up_cpu'] * 100:.0f}% CPU): not served from cache")
    b.stop(ngp, shp)


def tls_pair(b):
    """One ECDSA P-256 certificate for 127.0.0.1, served by both proxies in scenario 9."""
    cert, key = os.path.join(b.tmp, "tls.crt"), os.path.join(b.tmp, "tls.key")
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl could not make the scenario 9 certificate: {r.stderr.strip()}")
    os.chmod(key, 0o644)  # nginx's worker runs as root here, the shim as this user
    return cert, key


def s9_tls(b):
    print("\n== 9 TLS at the proxy (ECDSA P-256, wrk over https): pass-through 1 KB and cache hit", flush=True)
    pair = tls_pair(b)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port, tls=pair)
    sh, shp = b.shim(b.standin.port, tls=pair)
    http_rounds(b, "9tls", [ng, sh], SMALL, tls=True)
    http_rounds(b, "9tlshit", [ng, sh], ENDPOINT, ADMIN_HEADERS, tls=True)
    for name in ("nginx", "shim"):
        for r in b.results.get(("9tlshit", name), []):
            if r.get("up_cpu", 0) > 0.10:
                b.fail("9", name, f"upstream busy ({r['up_cpu'] * 100:.0f}% CPU): not served from cache")
    b.stop(ngp, shp)


def s6_ratelimit(b):
    print("\n== 6 rate-limit reject path (429), shim per_user vs nginx limit_req (10 r/m, burst 10)", flush=True)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port, rate="10r/m", burst=10)
    sh, shp = b.shim(b.standin.port, user_n=10, user_per="1m")
    # Check the answers really are 429s before measuring.
    for c in (ng, sh):
        codes = []
        for _ in range(15):
            req = urllib.request.Request(f"http://127.0.0.1:{c.port}{ENDPOINT}")
            for h in ADMIN_HEADERS:
                k, v = h.split(": ", 1)
                req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    codes.append(r.status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
        if codes[-1] != 429 or codes.count(429) < 4:
            b.fail("6", c.name, f"expected 429 after the burst, got {codes}")
    before = b.metrics(sh.admin).get("rcshim_ratelimit_rejected_user_total", 0)
    http_rounds(b, "6", [ng, sh], ENDPOINT, ADMIN_HEADERS, expect="429")
    after = b.metrics(sh.admin).get("rcshim_ratelimit_rejected_user_total", 0)
    b.extra["6_shim_rejected"] = after - before
    b.stop(ngp, shp)


def s2_large(b):
    print("\n== 2 pass-through 100 MB download and streaming upload (curl)", flush=True)
    path = os.path.join(b.tmp, "upload.bin")
    block = bytes(i % 251 for i in range(1 << 20))
    with open(path, "wb") as f:
        for _ in range(BIG_BYTES >> 20):
            f.write(block)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port)
    sh, shp = b.shim(b.standin.port)
    direct = Contender("direct", b.standin.port)
    for r, c in b.rounds([ng, sh, direct]):
        for kind in ("download", "upload"):
            b.standin.restart()
            url = f"http://127.0.0.1:{c.port}"
            if kind == "download":
                argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}",
                        f"{url}/_standin/bytes/{BIG_BYTES}"]
            else:
                argv = ["curl", "-sS", "-o", os.path.join(b.tmp, "upload.out"), "-X", "POST", "-T", path,
                        "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                        "-w", "%{http_code} %{size_upload} %{speed_upload}", f"{url}/_standin/upload"]
            res, m = b.measure(c, lambda: b.run(argv, timeout=120))
            parts = res.stdout.split()
            ok = res.returncode == 0 and len(parts) == 3 and parts[0] == "200" and int(float(parts[1])) == BIG_BYTES
            if ok and kind == "upload":
                with open(os.path.join(b.tmp, "upload.out")) as f:
                    ok = json.load(f).get("bytes") == BIG_BYTES
            if not ok:
                b.fail("2", c.name, f"{kind}: {res.stdout} {res.stderr}")
                continue
            mbs = float(parts[2]) / 1e6
            growth = (m["hwm_kb"] - m["rss0_kb"]) if "hwm_kb" in m else None
            print(f"  round {r + 1} {c.name:6} {kind:8} {mbs:8.0f} MB/s  peak RSS growth "
                  f"{fmt_kb(growth) if growth is not None else '-'}", flush=True)
            b.record(f"2{kind}", c.name, rate=mbs, growth=growth, **m)
    b.stop(ngp, shp)


def s5_coalescing(b):
    print("\n== 5 coalescing: 1000 concurrent misses on one key (upstream answers after 1 s)", flush=True)
    up_port = free_port()
    counter = Proc(b.tmp, "counting-upstream",
                   [b.args.loadgen, "upstream", "--listen", f"127.0.0.1:{up_port}", "--delay-ms", "1000"],
                   LOAD_CPU, ready=r"loadgen upstream listening")
    ng, ngp = b.nginx(up_port)
    sh, shp = b.shim(up_port)

    def count():
        with urllib.request.urlopen(f"http://127.0.0.1:{up_port}/_count", timeout=5) as r:
            return json.loads(r.read()).get("/api/v1/im.messages.others", 0)

    for r, c in b.rounds([ng, sh]):
        target = f"/api/v1/im.messages.others?roomId=bench-{r}-{c.name}-{time.time_ns()}"
        n0 = count()
        res, m = b.measure(c, lambda: b.loadgen(
            "burst", "--addr", f"127.0.0.1:{c.port}", "--target", target, "--conns", "1000",
            "-H", ADMIN_HEADERS[0], "-H", ADMIN_HEADERS[1], timeout=120))
        upstream = count() - n0
        ok200 = res["status"].get("200", 0)
        print(f"  round {r + 1} {c.name:6} upstream requests {upstream}  200s {ok200}/1000  "
              f"p50 {res['p50_us'] / 1000:.0f} ms  max {res['max_us'] / 1000:.0f} ms", flush=True)
        if res["errors"] or ok200 != 1000:
            b.fail("5", c.name, f"round {r + 1}: {res}")
        b.record("5", c.name, rate=upstream, p50=res["p50_us"] / 1000, p99=res["p99_us"] / 1000, **m)
    b.stop(ngp, shp, counter)


def s7_websocket(b):
    a = b.args
    print("\n== 7 websocket echo through the proxy (32 sockets, 64-byte messages)", flush=True)
    b.standin.restart()
    ng, ngp = b.nginx(b.standin.port)
    sh, shp = b.shim(b.standin.port)
    direct = Contender("direct", b.standin.port)
    for r, c in b.rounds([ng, sh, direct]):
        b.standin.restart()
        url = f"ws://127.0.0.1:{c.port}/websocket"
        res, m = b.measure(c, lambda: b.loadgen(
            "ws-echo", "--url", url, "--conns", "32", "--secs", str(a.secs),
            "--warmup-secs", str(a.warm), timeout=a.secs + a.warm + 60))
        if res["errors"] or res["round_trips"] == 0:
            b.fail("7", c.name, f"round {r + 1}: {res}")
        print(f"  round {r + 1} {c.name:6} {res['per_s']:>10.0f} round trips/s  p50 {res['p50_us'] / 1000:.3f} ms  "
              f"p99 {res['p99_us'] / 1000:.3f} ms  proxy cpu {m.get('cpu', 0) * 100:.0f}%", flush=True)
        b.record("7echo", c.name, rate=res["per_s"], p50=res["p50_us"] / 1000, p99=res["p99_us"] / 1000, **m)
    b.stop(ngp, shp)

    # Idle tunnels: each costs the proxy two sockets, so the count is bounded by the fd limit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = min(a.tunnels, (hard - 200) // 2) if hard != resource.RLIM_INFINITY else a.tunnels
    b.extra["7_tunnels"] = n
    print(f"\n== 7 {n} idle websocket tunnels: proxy RSS per tunnel", flush=True)
    for r in range(a.mem_rounds):
        for name in (["nginx", "shim"] if r % 2 == 0 else ["shim", "nginx"]):
            b.standin.restart()
            if name == "nginx":
                # nginx starts closing fresh connections when under 1/16 of its slots are free.
                c, p = b.nginx(b.standin.port, wc=int(2.2 * n) + 500, nofile=min(hard, 2 * n + 400))
            else:
                c, p = b.shim(b.standin.port)
            # One tunnel first, so what is measured is the cost of the next n.
            b.loadgen("ws-echo", "--url", f"ws://127.0.0.1:{c.port}/websocket", "--conns", "1",
                      "--secs", "1", "--warmup-secs", "0")
            time.sleep(0.3)
            rss0 = proc_status(c.pid, "VmRSS")
            reset_peak(c.pid)
            holder = subprocess.Popen(
                ["taskset", "-c", LOAD_CPU, a.loadgen, "ws-idle", "--url", f"ws://127.0.0.1:{c.port}/websocket",
                 "--conns", str(n)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = holder.stdout.readline()
            try:
                ready = json.loads(line)
            except ValueError:
                ready = {"ready": 0, "errors": n, "raw": line + holder.stderr.read()}
            time.sleep(1.0)
            rss1 = proc_status(c.pid, "VmRSS")
            hwm = proc_status(c.pid, "VmHWM")
            holder.stdin.close()
            holder.wait(timeout=60)
            per = (rss1 - rss0) / max(ready.get("ready", 0), 1)
            print(f"  round {r + 1} {name:6} {ready.get('ready')} tunnels open in {ready.get('open_secs', 0):.1f} s: "
                  f"RSS {fmt_kb(rss0)} -> {fmt_kb(rss1)}, {per:.1f} KB per tunnel", flush=True)
            if ready.get("errors") or ready.get("ready") != n:
                b.fail("7", name, f"idle tunnels: {ready}")
            b.record("7idle", name, rate=per, hwm_kb=hwm, rss0_kb=rss0, rss1_kb=rss1)
            b.stop(p)


def s8_keys(b):
    a = b.args
    n = a.keys
    w = a.key_window
    print(f"\n== 8 {n} distinct rate-limit keys (X-Forwarded-For from a trusted peer, per_ip 1 per {w} s)",
          flush=True)
    # A key is idle once its budget is full again, `w` seconds after its request; the sweep
    # runs every `w` seconds from the start. Its first pass (at w) finds no idle key as long
    # as the flood started after the shim did, its second (at 2w) forgets every key of a
    # flood shorter than w: so all keys are held right after the flood, and none after 2w.
    b.standin.restart()
    sh, shp = b.shim(b.standin.port, trusted=True, ip_n=1, ip_per=f"{w}s")
    rss0 = proc_status(sh.pid, "VmRSS")
    reset_peak(sh.pid)
    # No credential: each request spends its per-IP budget, then gets the 401.
    res, m = b.measure(sh, lambda: b.loadgen(
        "xff-flood", "--addr", f"127.0.0.1:{sh.port}", "--target", "/api/v1/im.messages.others?roomId=x",
        "--keys", str(n), "--conns", "32", timeout=1200))
    keys = b.metrics(sh.admin).get("rcshim_ratelimit_keys", -1)
    rss1 = proc_status(sh.pid, "VmRSS")
    hwm = proc_status(sh.pid, "VmHWM")
    if res["errors"] or res["status"].get("401", 0) != n:
        b.fail("8", "shim", f"flood: {res}")
    print(f"  flood {res['per_s']:.0f} req/s, statuses {res['status']}, keys held {keys:.0f}, "
          f"RSS {fmt_kb(rss0)} -> {fmt_kb(rss1)} (peak {fmt_kb(hwm)})", flush=True)
    if keys != n:
        print(f"  note: {n - keys:.0f} keys were already forgotten when the flood ended "
              f"(the flood took longer than {w} s)", flush=True)
    end = time.time() + 3 * w + 5
    while time.time() < end:
        time.sleep(1)
        if b.metrics(sh.admin).get("rcshim_ratelimit_keys", -1) == 0:
            break
    time.sleep(1)
    rss2 = proc_status(sh.pid, "VmRSS")
    keys_after = b.metrics(sh.admin).get("rcshim_ratelimit_keys", -1)
    print(f"  after the sweep: keys held {keys_after:.0f}, RSS {fmt_kb(rss2)}", flush=True)
    b.record("8", "shim", rate=res["per_s"], rss0_kb=rss0, rss1_kb=rss1, hwm_kb=hwm, rss2_kb=rss2,
             keys=keys, keys_after=keys_after, cpu=m.get("cpu"))
    b.stop(shp)


# ---------------------------------------------------------------------------------------
# report


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def fmt_kb(kb):
    if kb is None:
        return "-"
    return f"{kb / 1024:.1f} MB"


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def s10_audit(b):
    print("\n== 9 intercepted endpoint with the audit trail off, fsync = always, fsync = never "
          "(cache hits; misses with Cache-Control: no-cache, so every request goes upstream)", flush=True)
    a = b.args
    b.standin.restart()
    shims = []
    for label in ("off", "always", "never"):
        extra = "" if label == "off" else AUDIT_CONF.format(
            path=os.path.join(b.tmp, f"audit-{label}.jsonl"), fsync=label)
        c, proc = b.shim(b.standin.port, extra=extra)
        c.label = label
        shims.append((c, proc))
    for kind, headers in (("hit", ADMIN_HEADERS), ("miss", ADMIN_HEADERS + ["Cache-Control: no-cache"])):
        for r, c in b.rounds([c for c, _ in shims]):
            b.standin.restart()
            b.wrk(c.port, ENDPOINT, headers, a.warm)
            res, m = b.measure(c, lambda: b.wrk(c.port, ENDPOINT, headers, a.secs))
            if res["socket_errors"] or res["non2xx"] or res["requests"] == 0:
                b.fail("9", c.label, f"{kind} round {r + 1}: {res['socket_errors']} socket errors, "
                       f"{res['non2xx']} non-2xx of {res['requests']}\n{res['raw'][-600:]}")
            print(f"  round {r + 1} {kind:4} audit {c.label:6} {res['rate']:>10.0f} req/s  p50 {fmt_ms(res['p50'])}  "
                  f"p99 {fmt_ms(res['p99'])}  proxy cpu {m.get('cpu', 0) * 100:.0f}%", flush=True)
            b.record(f"9{kind}-{c.label}", "shim", rate=res["rate"], p50=res["p50"], p99=res["p99"], **m)
    for c, _ in shims:
        if c.label == "off":
            continue
        mt = b.metrics(c.admin)
        b.extra[f"9_{c.label}"] = dict(
            records=mt.get("rcshim_audit_records_written_total", 0),
            batches=mt.get("rcshim_audit_batches_total", 0),
            fsyncs=mt.get("rcshim_audit_fsync_duration_seconds_count", 0),
            fsync_sum=mt.get("rcshim_audit_fsync_duration_seconds_sum", 0),
            failures=mt.get("rcshim_audit_write_failures_total", 0),
        )
    b.stop(*[p for _, p in shims])


def spread(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    if len(vals) < 2:
        return None
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m * 100 if m else None


ROWS = [
    ("1", "1 pass-through GET 1 KB", "req/s"),
    ("2download", "2 download 100 MB", "MB/s"),
    ("2upload", "2 upload 100 MB (streamed)", "MB/s"),
    ("3", "3 HTTP/2 GET 1 KB (h2c)", "req/s"),
    ("4", "4 endpoint, cache hit", "req/s"),
    ("5", "5 1000 concurrent misses", "upstream req"),
    ("6", "6 rate-limit reject (429)", "req/s"),
    ("7echo", "7 websocket echo", "rt/s"),
    ("7idle", "7 idle websocket tunnels", "KB/tunnel"),
    ("8", "8 rate-limit keys", "req/s"),
    ("9tls", "9 TLS pass-through GET 1 KB", "req/s"),
    ("9tlshit", "9 TLS endpoint, cache hit", "req/s"),
    ("10hit-off", "10 endpoint hit, audit off", "req/s"),
    ("10hit-always", "10 endpoint hit, audit fsync always", "req/s"),
    ("10hit-never", "10 endpoint hit, audit fsync never", "req/s"),
    ("10miss-off", "10 endpoint miss, audit off", "req/s"),
    ("10miss-always", "10 endpoint miss, audit fsync always", "req/s"),
    ("10miss-never", "10 endpoint miss, audit fsync never", "req/s"),
]


def table(b):
    head = ["scenario", "contender", "rate (median ± spread)", "p50", "p99", "peak RSS",
            "proxy CPU (per req)", "shim/nginx", "shim/direct"]
    rows = []
    for key, label, unit in ROWS:
        first = True
        for name in ("nginx", "shim", "direct"):
            rs = b.results.get((key, name))
            if not rs:
                continue
            rate = med(rs, "rate")
            sp = spread(rs, "rate")
            if unit in ("req/s", "rt/s"):
                rate_s = f"{rate:,.0f} {unit}"
            elif unit == "upstream req":
                rate_s = f"{rate:.0f} {unit} (max {max(r['rate'] for r in rs):.0f})"
            else:
                rate_s = f"{rate:,.1f} {unit}"
            if sp is not None and unit != "upstream req":
                rate_s += f" ± {sp:.1f}%"
            rss = "-"
            if key.startswith("2") and name != "direct":
                rss = f"{fmt_kb(med(rs, 'hwm_kb'))} (+{fmt_kb(med(rs, 'growth'))})"
            elif key == "7idle":
                rss = f"{fmt_kb(med(rs, 'rss1_kb'))} with {b.extra.get('7_tunnels')}"
            elif key == "8":
                r0 = rs[0]
                rss = (f"{fmt_kb(r0['rss1_kb'])} with {r0['keys']:,.0f} keys; "
                       f"{fmt_kb(r0['rss2_kb'])} after sweep ({r0['keys_after']:,.0f} keys)")
            elif name != "direct" and med(rs, "hwm_kb") is not None:
                rss = fmt_kb(med(rs, "hwm_kb"))
            cpu = med(rs, "cpu")
            cpu_s = f"{cpu * 100:.0f}%" if cpu is not None and name != "direct" else "-"
            if cpu_s != "-" and unit in ("req/s", "rt/s") and rate:
                # CPU time per request: comparable even when CPU 1 (load + upstream) limited the rate
                cpu_s += f" ({med([dict(x=r['cpu'] / r['rate'] * 1e6) for r in rs if r.get('cpu') and r.get('rate')], 'x'):.1f} µs)"
            rn = rd = ""
            if name == "shim" and key != "5":
                ng = b.results.get((key, "nginx"))
                di = b.results.get((key, "direct"))
                if ng and med(ng, "rate"):
                    rn = f"{rate / med(ng, 'rate'):.2f}x"
                if di and med(di, "rate"):
                    rd = f"{rate / med(di, 'rate'):.2f}x"
            rows.append([label if first else "", name, rate_s, fmt_ms(med(rs, "p50")),
                         fmt_ms(med(rs, "p99")), rss, cpu_s, rn, rd])
            first = False
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def targets(b):
    out = []

    def get(key, name, field):
        rs = b.results.get((key, name))
        return med(rs, field) if rs else None

    def verdict(ok):
        return "met" if ok else "NOT met"

    s, n = get("1", "shim", "rate"), get("1", "nginx", "rate")
    sp, np_ = get("1", "shim", "p99"), get("1", "nginx", "p99")
    if None not in (s, n, sp, np_):
        out.append(f"pass-through 1 KB: throughput {s / n:.2f}x nginx (>= 1.0), p99 {fmt_ms(sp)} vs "
                   f"{fmt_ms(np_)} (<=): {verdict(s >= n and sp <= np_)}")
    s, n = get("4", "shim", "rate"), get("4", "nginx", "rate")
    if None not in (s, n):
        out.append(f"cache hit: {s / n:.2f}x nginx proxy_cache (>= 1.5): {verdict(s >= 1.5 * n)}")
    rs = b.results.get(("5", "shim"))
    if rs:
        counts = [r["rate"] for r in rs]
        out.append(f"1000 concurrent misses: upstream requests per round {counts} (exactly 1): "
                   f"{verdict(all(c == 1 for c in counts))}")
    g = [get(k, "shim", "growth") for k in ("2download", "2upload")]
    if None not in g:
        out.append(f"100 MB down/up: peak RSS growth {fmt_kb(g[0])} / {fmt_kb(g[1])} (< 16 MB): "
                   f"{verdict(max(g) < 16 * 1024)}")
    v = get("7idle", "shim", "rate")
    if v is not None:
        out.append(f"{b.extra.get('7_tunnels')} idle websocket tunnels: {v:.1f} KB each (< 64 KB): {verdict(v < 64)}")
    rs = b.results.get(("8", "shim"))
    if rs:
        r = rs[0]
        full = b.args.keys >= 1_000_000
        out.append(f"{b.args.keys:,} rate-limit keys: {fmt_kb(r['rss1_kb'])} (< 256 MB), "
                   f"{fmt_kb(r['rss2_kb'])} once forgotten (< 64 MB): "
                   f"{verdict(r['rss1_kb'] < 256 * 1024 and r['rss2_kb'] < 64 * 1024)}"
                   + ("" if full else " (fewer keys than the target's 1,000,000: indicative only)"))
    for kind in ("hit", "miss"):
        off = get(f"9{kind}-off", "shim", "rate")
        for label in ("always", "never"):
            on = get(f"9{kind}-{label}", "shim", "rate")
            if None not in (off, on):
                out.append(f"audit trail, endpoint {kind}, fsync = {label}: {on / off:.2f}x the rate with the trail off")
    for label in ("always", "never"):
        x = b.extra.get(f"9_{label}")
        if x:
            line = (f"audit trail fsync = {label}: {x['records']:,.0f} records in {x['batches']:,.0f} writes "
                    f"({x['records'] / max(x['batches'], 1):.1f} records per write), {x['failures']:.0f} failures")
            if x["fsyncs"]:
                line += f", mean fdatasync {x['fsync_sum'] / x['fsyncs'] * 1000:.2f} ms over {x['fsyncs']:,.0f}"
            out.append(line)
    return out


# ---------------------------------------------------------------------------------------

SCENARIOS = {
    "1": s1_passthrough,
    "2": s2_large,
    "3": s3_h2,
    "4": s4_cache_hit,
    "5": s5_coalescing,
    "6": s6_ratelimit,
    "7": s7_websocket,
    "8": s8_keys,
    "9": s9_tls,
    "10": s10_audit,
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shim", required=True)
    p.add_argument("--standin", required=True)
    p.add_argument("--loadgen", required=True)
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--short", action="store_true", help="2 rounds of 1 s runs, smaller memory scenarios (a smoke test, under 2 minutes)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--secs", type=int, help="seconds per measured run")
    p.add_argument("--only", default="123456789", help="scenarios to run, e.g. 14")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    a = p.parse_args()
    a.rounds = a.rounds or (2 if a.short else 3)
    a.secs = a.secs or (1 if a.short else 10)
    a.warm = 1 if a.short else 2
    a.tunnels = 1000 if a.short else 10000
    a.mem_rounds = 1 if a.short else a.rounds
    a.keys = 50_000 if a.short else 1_000_000
    a.key_window = 3 if a.short else 60

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    b = Bench(a)
    start = time.time()
    load0 = open("/proc/loadavg").read().split()[:3]
    print(f"rocketchat-shim benchmark ({'short' if a.short else 'full'}): {a.rounds} rounds, "
          f"{a.secs} s runs; proxy on CPU {PROXY_CPU}, load generator and upstream on CPU {LOAD_CPU}")
    print(f"load average at start: {' '.join(load0)}", flush=True)
    try:
        for s in a.only:
            t = time.time()
            SCENARIOS[s](b)
            print(f"  ({time.time() - t:.0f} s)", flush=True)
    except (Void, RuntimeError, subprocess.TimeoutExpired) as e:
        b.errors.append(str(e))
    except KeyboardInterrupt:
        b.errors.append("interrupted")
    finally:
        b.cleanup()
    load1 = open("/proc/loadavg").read().split()[:3]
    print(f"\nload average at end: {' '.join(load1)}; took {time.time() - start:.0f} s")
    if b.errors:
        print("\nRUN VOID: errors during measured runs, no table is reported:")
        for e in b.errors:
            print(f"  - {e}")
        sys.exit(1)
    cpu = "?"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
    except (OSError, AttributeError):
        pass
    print(f"\nMachine: {cpu}, {os.cpu_count()} CPUs; load average {' '.join(load0)} at start, "
          f"{' '.join(load1)} at end")
    print(f"Command: bench/run.sh{' --short' if a.short else ''} ({a.rounds} rounds, {a.secs} s runs, medians; "
          "spread = (max - min) / median)\n")
    print(table(b))
    print("\nTargets" + (" (short mode: indicative only)" if a.short else "") + ":")
    for t in targets(b):
        print(f"- {t}")
    if "6_shim_rejected" in b.extra:
        print(f"\n(6: the shim counted {b.extra['6_shim_rejected']:.0f} per-user refusals during the measured runs)")


if __name__ == "__main__":
    main()
