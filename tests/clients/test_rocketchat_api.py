"""The PyPI client `rocketchat_API` against the shim, in front of the stand-in Rocket.Chat.

Both binaries run as subprocesses on port 0 (addresses parsed from their first lines) and are
stopped at teardown. Every request goes to 127.0.0.1 only. The client logs in through the shim
(`POST /api/v1/login` passes through), then calls the endpoint the shim owns:

- 3.7.1: `dm_messages_others(room)` is a paginating generator: `GET
  /api/v1/dm.messages.others?roomId=R&offset=0&count=50`, then the next offsets until a short
  (or empty) page comes back. The raw HTTP answers are recorded through the requests session's
  response hook, so `success`, `total` and the paging are checked on the wire.
- 3.0.0: `im_messages_others(room)` sends `GET /api/v1/im.messages.others?roomId=R` and returns
  the parsed body.

On an error both versions raise `RocketApiException` carrying the status and the raw body, which
are compared byte for byte with the bodies of spec/shim.md section 3.

Environment: ROCKETCHAT_SHIM_BIN / ROCKETCHAT_STANDIN_BIN (default: target/debug/ of the repo),
RC_API_EXPECT (see conftest.py).
"""

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DM = "alice-idbob-id"  # the seed's DM room between alice and bob: 120 messages
DM_TOTAL = 120
START_TIMEOUT = 30.0

BODY_401 = (
    '{"success":false,"error":"You must be logged in to do this.",'
    '"status":"error","message":"You must be logged in to do this."}'
)
BODY_403 = (
    '{"success":false,"error":"User does not have the permissions required for this action '
    '[error-unauthorized]"}'
)
BODY_DISABLED = (
    '{"success":false,"error":"This endpoint is disabled [error-endpoint-disabled]",'
    '"errorType":"error-endpoint-disabled","details":{"route":"/api/v1/im.messages.others"}}'
)

ADMIN_HEADERS = {"X-User-Id": "admin-id", "X-Auth-Token": "admin-token"}


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _binary(env_name, name):
    path = Path(os.environ.get(env_name) or REPO / "target" / "debug" / name)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} binary not found at {path}: run `cargo build --workspace --bins` "
            f"(scripts/test.sh does), or set {env_name}",
            pytrace=False,
        )
    return path


class Proc:
    """A subprocess whose stdout/stderr are drained by threads (the shim logs every request to
    stdout: an undrained pipe would block it). Lines are kept for failure messages."""

    def __init__(self, name, argv):
        self.name = name
        self.lines = queue.Queue()
        self.out, self.err = [], []
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            cwd=REPO,
        )
        threading.Thread(target=self._pump, args=(self.p.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stderr, self.err, False), daemon=True).start()

    def _pump(self, stream, keep, to_queue):
        for line in stream:
            keep.append(line)
            if to_queue:
                self.lines.put(line)
        if to_queue:
            self.lines.put(None)  # EOF

    def wait_line(self, match, what):
        """Returns the first stdout line for which match(line) is truthy."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no {what} within {START_TIMEOUT:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                time.sleep(0.2)  # let stderr drain
                self._fail(f"exited (status {self.p.poll()}) before printing {what}")
            found = match(line)
            if found:
                return found

    def _fail(self, why):
        self.stop()
        pytest.fail(
            f"{self.name} {why}.\n--- stdout ---\n{''.join(self.out)[-3000:]}"
            f"\n--- stderr ---\n{''.join(self.err)[-3000:]}",
            pytrace=False,
        )

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)


def _standin_addr(line):
    prefix = "rocketchat-standin listening on "
    line = line.strip()
    return line[len(prefix):] if line.startswith(prefix) else None


def _find_key(obj, key):
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], str):
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found:
                return found
    return None


def _shim_addr(line):
    if "rocketchat-shim listening" not in line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    addr = _find_key(obj, "addr")
    return f"http://{addr}" if addr else None


@pytest.fixture(scope="session")
def standin_url():
    proc = Proc("rocketchat-standin", [str(_binary("ROCKETCHAT_STANDIN_BIN", "rocketchat-standin")), "--listen", "127.0.0.1:0"])
    try:
        url = proc.wait_line(_standin_addr, "'rocketchat-standin listening on http://ADDR' line")
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        proc.stop()


def _start_shim(tmp_path_factory, upstream, dm_history_endpoint):
    cfg = tmp_path_factory.mktemp("shim") / "shim.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"
[admin]
listen = ""
[upstream]
url = "{upstream}"
[policy]
dm_history_endpoint = "{dm_history_endpoint}"
roles = "upstream"
error_style = "modern"
[rate_limit]
enabled = false
"""
    )
    proc = Proc(f"rocketchat-shim ({dm_history_endpoint})", [str(_binary("ROCKETCHAT_SHIM_BIN", "rocketchat-shim")), "--config", str(cfg)])
    url = proc.wait_line(_shim_addr, "JSON 'rocketchat-shim listening' line with an addr")
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


@pytest.fixture(scope="session")
def shim_url(standin_url, tmp_path_factory):
    proc, url = _start_shim(tmp_path_factory, standin_url, "enabled")
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def shim_disabled_url(standin_url, tmp_path_factory):
    proc, url = _start_shim(tmp_path_factory, standin_url, "disabled")
    try:
        yield url
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


class Client:
    """A rocketchat_API client whose requests session records every HTTP answer."""

    def __init__(self, url, **kwargs):
        from rocketchat_API.rocketchat import RocketChat

        self.responses = []
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment: 127.0.0.1 only
        self.session.hooks["response"].append(lambda r, *a, **k: self.responses.append(r))
        self.rc = RocketChat(server_url=url, session=self.session, timeout=15, **kwargs)

    def gets(self):
        return [r for r in self.responses if r.request.method == "GET"]

    def close(self):
        self.session.close()


@pytest.fixture
def connect():
    made = []

    def make(url, **kwargs):
        c = Client(url, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def others(client, rc_version, room, **kwargs):
    """The endpoint through the client's own method for it: a list of messages (3.7.1's
    generator drained) or the parsed body (3.0.0)."""
    if rc_version == "3.7.1":
        return list(client.rc.dm_messages_others(room, **kwargs))
    return client.rc.im_messages_others(room, **kwargs)


def expect_error(client, rc_version, room, status, body=None):
    from rocketchat_API.APIExceptions.RocketExceptions import RocketApiException

    with pytest.raises(RocketApiException) as info:
        others(client, rc_version, room)
    err = info.value
    assert err.status_code == status, err.response
    if body is not None:
        assert err.response == body
    last = client.gets()[-1]
    assert last.status_code == status
    assert last.headers["Content-Type"].startswith("application/json")
    return err


def query(resp):
    return parse_qsl(urlsplit(resp.request.url).query, keep_blank_values=True)


def path(resp):
    return urlsplit(resp.request.url).path


def direct(standin_url, path_and_query):
    """The stand-in's own answer, without the shim, as admin."""
    with requests.Session() as s:
        s.trust_env = False
        return s.get(standin_url + path_and_query, headers=ADMIN_HEADERS, timeout=15)


# ---------------------------------------------------------------------------------------------
# Both versions
# ---------------------------------------------------------------------------------------------


def test_installed_client_is_the_expected_one(rc_version):
    import importlib.metadata

    from rocketchat_API.rocketchat import RocketChat

    assert importlib.metadata.version("rocketchat_API") == rc_version
    if rc_version == "3.7.1":
        assert hasattr(RocketChat, "dm_messages_others")
        assert not hasattr(RocketChat, "im_messages_others"), "3.7.1 has no im. methods"
    else:
        assert hasattr(RocketChat, "im_messages_others")


def test_login_passes_through(shim_url, connect):
    c = connect(shim_url, user="admin", password="admin-pass")
    (login,) = c.responses
    assert login.request.method == "POST" and path(login) == "/api/v1/login"
    assert login.status_code == 200
    assert login.json()["data"]["userId"] == "admin-id"
    assert c.rc.headers["X-User-Id"] == "admin-id"
    assert c.rc.headers["X-Auth-Token"] == "admin-token"


def test_plain_user_gets_403(shim_url, connect, rc_version):
    c = connect(shim_url, user="alice", password="alice-pass")
    expect_error(c, rc_version, DM, 403, BODY_403)
    assert len(c.gets()) == 1


def test_endpoint_disabled_gets_400(shim_disabled_url, connect, rc_version):
    c = connect(shim_disabled_url, user="admin", password="admin-pass")
    err = expect_error(c, rc_version, DM, 400, BODY_DISABLED)
    assert err.error_type == "error-endpoint-disabled"


def test_bad_token_gets_401(shim_url, connect, rc_version):
    c = connect(shim_url, user_id="admin-id", auth_token="not-a-valid-token")
    assert c.responses == []  # no login: the headers are set from the kwargs
    expect_error(c, rc_version, DM, 401, BODY_401)


@pytest.mark.parametrize("room", ["no-such-room", "GENERAL"])
def test_unknown_or_non_dm_room_passes_upstream_400_through(shim_url, standin_url, connect, rc_version, room):
    c = connect(shim_url, user="admin", password="admin-pass")
    err = expect_error(c, rc_version, room, 400)
    assert err.error_type == "error-room-not-found"
    assert "[error-room-not-found]" in err.error
    # The very body the upstream gives for the canonical query.
    own = direct(standin_url, f"/api/v1/im.messages.others?roomId={room}&offset=0&count=50")
    assert own.status_code == 400
    assert err.response == own.text


# ---------------------------------------------------------------------------------------------
# rocketchat_API 3.7.1: dm_messages_others, paginating
# ---------------------------------------------------------------------------------------------


@pytest.mark.rc_api("3.7.1")
def test_371_admin_reads_all_pages(shim_url, standin_url, connect):
    c = connect(shim_url, user="admin", password="admin-pass")
    msgs = list(c.rc.dm_messages_others(DM))
    gets = c.gets()
    # What the client sent: dm. name, roomId/offset/count in that order, 50 per page.
    assert [path(r) for r in gets] == ["/api/v1/dm.messages.others"] * 3
    assert [query(r) for r in gets] == [
        [("roomId", DM), ("offset", str(o)), ("count", "50")] for o in (0, 50, 100)
    ]
    bodies = [r.json() for r in gets]
    for r, b, (offset, n) in zip(gets, bodies, [(0, 50), (50, 50), (100, 20)]):
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert b["success"] is True
        assert b["total"] == DM_TOTAL
        assert b["offset"] == offset
        assert len(b["messages"]) == n
    assert len(msgs) == DM_TOTAL
    assert len({m["_id"] for m in msgs}) == DM_TOTAL
    assert all(m["rid"] == DM for m in msgs)
    # The shim hands the upstream's 200 body over unchanged.
    own = direct(standin_url, f"/api/v1/im.messages.others?roomId={DM}&offset=0&count=50")
    assert own.status_code == 200
    assert bodies[0] == own.json()


@pytest.mark.rc_api("3.7.1")
def test_371_count_and_offset(shim_url, connect):
    c = connect(shim_url, user="admin", password="admin-pass")
    everything = list(c.rc.dm_messages_others(DM, count=100))
    assert len(everything) == DM_TOTAL
    ids = [m["_id"] for m in everything]

    c.responses.clear()
    tail = list(c.rc.dm_messages_others(DM, count=10, offset=100))
    assert [m["_id"] for m in tail] == ids[100:]
    # 10 + 10, then an empty page at 120 ends the walk.
    assert [dict(query(r))["offset"] for r in c.gets()] == ["100", "110", "120"]
    assert [len(r.json()["messages"]) for r in c.gets()] == [10, 10, 0]
    assert all(r.json()["total"] == DM_TOTAL and r.json()["count"] <= 10 for r in c.gets())

    c.responses.clear()
    first = list(c.rc.dm_messages_others(DM, count=10, max_count=25))
    assert [m["_id"] for m in first] == ids[:25]
    assert [dict(query(r))["offset"] for r in c.gets()] == ["0", "10", "20"]


# ---------------------------------------------------------------------------------------------
# rocketchat_API 3.0.0: im_messages_others, one request
# ---------------------------------------------------------------------------------------------


@pytest.mark.rc_api("3.0.0")
def test_300_admin_reads_default_page(shim_url, standin_url, connect):
    c = connect(shim_url, user="admin", password="admin-pass")
    body = c.rc.im_messages_others(DM)
    (get,) = c.gets()
    assert path(get) == "/api/v1/im.messages.others"
    assert query(get) == [("roomId", DM)]  # no offset/count: the shim's defaults apply
    assert get.status_code == 200
    assert get.headers["Content-Type"].startswith("application/json")
    assert body["success"] is True
    assert body["total"] == DM_TOTAL
    assert body["offset"] == 0
    assert len(body["messages"]) == 50
    assert all(m["rid"] == DM for m in body["messages"])
    own = direct(standin_url, f"/api/v1/im.messages.others?roomId={DM}&offset=0&count=50")
    assert own.status_code == 200
    assert body == own.json()


@pytest.mark.rc_api("3.0.0")
def test_300_count_and_offset(shim_url, connect):
    c = connect(shim_url, user="admin", password="admin-pass")
    ids = [m["_id"] for m in c.rc.im_messages_others(DM, count=100)["messages"]]
    ids += [m["_id"] for m in c.rc.im_messages_others(DM, count=100, offset=100)["messages"]]
    assert len(ids) == DM_TOTAL == len(set(ids))

    body = c.rc.im_messages_others(DM, count=10, offset=110)
    assert query(c.gets()[-1]) == [("roomId", DM), ("count", "10"), ("offset", "110")]
    assert body["success"] is True and body["total"] == DM_TOTAL
    assert [m["_id"] for m in body["messages"]] == ids[110:]


@pytest.mark.rc_api("3.0.0")
def test_300_dm_alias_is_the_same_endpoint(shim_url, connect):
    c = connect(shim_url, user="admin", password="admin-pass")
    via_im = c.rc.im_messages_others(DM, count=5)
    via_dm = c.rc.dm_messages_others(DM, count=5)  # not paginated in 3.0.0
    assert path(c.gets()[-1]) == "/api/v1/dm.messages.others"
    assert via_dm == via_im
    assert via_dm["success"] is True and len(via_dm["messages"]) == 5
