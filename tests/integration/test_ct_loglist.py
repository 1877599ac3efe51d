"""The CT log list as stubborn loads and installs it: `update-log-list`
replaces the conf's ct-log-list only with a list it fetched over verified
HTTPS and validated, leaving the old file byte for byte on any failure;
`check-cert --log-list` refuses a malformed list with exit 2, yet a list
with one bad log entry still loads the others and says what it skipped."""

import base64
import email.utils
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

import ct_fixture as ctf
import servers

RUN_TIMEOUT = 30
DAY = ctf.DAY


@pytest.fixture(scope="module")
def universe(tmp_path_factory):
    u = ctf.Universe()
    u.write(tmp_path_factory.mktemp("ct"), presets=["ok2", "rsa", "readonly"])
    return u


def _run(cmd, env=None):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd} still running after {RUN_TIMEOUT}s: {e.stdout!r} {e.stderr!r}")


# --- an HTTPS server for update-log-list --------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        ctype, body, *modified = route
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if modified:
            m = modified[0]
            self.send_header("Last-Modified", m if isinstance(m, str)
                             else email.utils.formatdate(m, usegmt=True))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        self.server.requests.append(fmt % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, family, context, routes, requests):
        self.address_family = family
        self.context = context
        self.routes = routes
        self.requests = requests
        super().__init__(address, _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is not None:
            # Handshake in the handler thread, not in the accept loop: a
            # client that hangs up mid-handshake must not stall the server.
            sock = self.context.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if self.context is not None:
            request.settimeout(10)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


class ListServer:
    """HTTPS (or, without a certificate, plain HTTP) on 127.0.0.1 and, when
    usable, ::1 with one port, so https://localhost:PORT/ works wherever
    localhost resolves.  Runs in threads of the test process."""

    def __init__(self, routes, cert_pem=None, key_pem=None, ipv6=False):
        ctx = None
        if cert_pem is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert_pem), str(key_pem))
        self.requests = []
        self.servers = []
        for _ in range(20):
            v4 = _Server(("127.0.0.1", 0), socket.AF_INET, ctx, routes, self.requests)
            self.port = v4.server_address[1]
            if not ipv6:
                self.servers = [v4]
                break
            try:
                v6 = _Server(("::1", self.port), socket.AF_INET6, ctx, routes, self.requests)
            except OSError:
                v4.server_close()
                continue
            self.servers = [v4, v6]
            break
        if not self.servers:
            raise RuntimeError("no port free on both 127.0.0.1 and ::1")
        self.threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1},
                                         daemon=True) for s in self.servers]
        for t in self.threads:
            t.start()

    def url(self, path, scheme="https"):
        return f"{scheme}://localhost:{self.port}{path}"

    def stop(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()
        for t in self.threads:
            t.join(timeout=5)


def _write_server_cert(ca, name, directory, now):
    cert, _pre, key, _tls = ctf.issue(ca, name, now - 3600, 30 * DAY)
    directory.mkdir(parents=True, exist_ok=True)
    chain = directory / f"{name}.chain.pem"
    chain.write_bytes(ctf.cert_pem(cert) + ctf.cert_pem(ca.cert))
    key_file = directory / f"{name}.key"
    key_file.write_bytes(ctf.key_pem(key))
    key_file.chmod(0o600)
    return chain, key_file


@pytest.fixture(scope="module")
def web(tmp_path_factory, universe, ipv6):
    """The list server and everything a stubborn client needs to trust it:
    an HTTPS server for localhost, one whose certificate names another
    host, one under an untrusted CA and a plain-HTTP one, all serving the
    same routes."""
    d = tmp_path_factory.mktemp("web")
    ca = ctf.CA(universe.now, cn="list server test")
    ca.write(d / "ca")
    rogue_ca = ctf.CA(universe.now, cn="untrusted list server")
    good = json.dumps(universe.log_list(), indent=1).encode() + b"\n"
    old = json.dumps(universe.log_list(timestamp=universe.now - 5 * DAY)).encode() + b"\n"
    stale = json.dumps(universe.log_list(timestamp=universe.now - 400 * DAY)).encode() + b"\n"
    future = json.dumps(universe.log_list(timestamp=universe.now + 180 * DAY)).encode() + b"\n"
    # Inside the day of clock skew allowed.
    soon = json.dumps(universe.log_list(timestamp=universe.now + 12 * 3600)).encode() + b"\n"

    def undated(version):
        def edit(ll):
            del ll["log_list_timestamp"]
            ll["assetVersion"] = version
        return edit
    # Apple's layout: no log_list_timestamp, so the server's Last-Modified.
    apple = json.dumps(universe.log_list(edit=undated(7))).encode() + b"\n"
    apple_old = json.dumps(universe.log_list(edit=undated(6))).encode() + b"\n"
    routes = {
        "/apple.json": ("application/json", apple, universe.now - 2 * DAY),
        "/apple-old.json": ("application/json", apple_old, universe.now - 5 * DAY),
        "/apple-stale.json": ("application/json", apple, universe.now - 100 * DAY),
        "/apple-undated.json": ("application/json", apple),
        "/apple-baddate.json": ("application/json", apple, "yesterday"),
        "/": ("application/json", good),
        "/log_list.json": ("application/json", good),
        "/soon.json": ("application/json", soon),
        "/old.json": ("application/json", old),
        "/future.json": ("application/json", future),
        "/stale.json": ("application/json", stale),
        "/not-json": ("text/html", b"<html><body>moved</body></html>\n"),
        "/malformed.json": ("application/json", b'{"version": "1", "log_list_timestamp": '
                                                b'"2026-01-01T00:00:00Z"}\n'),
        "/truncated.json": ("application/json", good[:len(good) // 2]),
        "/empty.json": ("application/json", b""),
    }
    started = {}
    try:
        for label, cacert, name in (("ok", ca, "localhost"), ("wrongname", ca, "other.test"),
                                    ("untrusted", rogue_ca, "localhost")):
            chain, key = _write_server_cert(cacert, name, d / label, universe.now)
            started[label] = ListServer(routes, chain, key, ipv6)
        started["http"] = ListServer(routes, ipv6=ipv6)
        empty_dir = d / "no-cert-dir"
        empty_dir.mkdir()
        env = dict(os.environ)
        # OpenSSL's default verify paths: only the test CA is trusted.
        env["SSL_CERT_FILE"] = str(d / "ca" / "root.pem")
        env["SSL_CERT_DIR"] = str(empty_dir)
        yield {"servers": started, "env": env, "good": good, "apple": apple}
    finally:
        for s in started.values():
            s.stop()


def _conf(tmp_path, universe, list_path):
    conf = tmp_path / "stubborn.conf"
    conf.write_text("\n".join([
        "[server]", "listen = 127.0.0.1:5353", "",
        "[trust]", f"ca-file = {universe.root_pem}", "ct = enforce",
        f"ct-log-list = {list_path}", "",
        "[upstream only]", f"url = tls://{ctf.HOSTNAME}:853", "address = 127.0.0.1", ""]))
    return conf


def _update(stubborn_bin, web, url, conf):
    return _run([stubborn_bin, "update-log-list", url, "-c", str(conf)], env=web["env"])


@pytest.mark.parametrize("first_install", [False, True], ids=["replace", "first-install"])
def test_update_installs_fetched_list(stubborn_bin, universe, web, tmp_path, first_install):
    lists = tmp_path / "lists"
    lists.mkdir()
    target = lists / "log_list.json"
    if not first_install:
        universe.write_log_list(target, timestamp=universe.now - 100 * DAY)
    conf = _conf(tmp_path, universe, target)
    p = _update(stubborn_bin, web, web["servers"]["ok"].url("/log_list.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert target.read_bytes() == web["good"]
    # Replaced by rename: no temporary file may be left beside it.
    assert sorted(os.listdir(lists)) == ["log_list.json"]
    # And what was installed is a list stubborn can use.
    leaf = universe.preset("ok2")
    c = _run([stubborn_bin, "check-cert", "--chain", str(leaf.chain_pem), "--host", ctf.HOSTNAME,
              "--ca-file", str(universe.root_pem), "--log-list", str(target),
              "--at", str(universe.check_time)])
    assert c.returncode == 0, (c.stdout, c.stderr)


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _daemons(conf_arg):
    """PIDs of the daemons (not their launchers) run with -c conf_arg."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if argv[1:4] == [b"run", b"-c", conf_arg.encode()] and comm != "stubborn-launch":
            pids.append(int(d))
    return pids


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_missing_list_is_fetched_at_start_from_relative_paths(stubborn_bin, universe, web,
                                                               tmp_path, foreground):
    # ct-log-list-url with no list installed: the daemon has its launcher
    # fetch one at once.  The paths are relative, from where it started,
    # also for the fetch the launcher runs once the daemon has moved to /.
    (tmp_path / "lists").mkdir()
    port = servers.free_port(["127.0.0.1"])
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "stubborn.conf").write_text("\n".join([
        "[server]", f"listen = 127.0.0.1:{port}", "state-dir = lists", "",
        "[trust]", f"ca-file = {universe.root_pem}", "ct = enforce",
        "ct-log-list = lists/log_list.json",
        f"ct-log-list-url = {web['servers']['ok'].url('/log_list.json')}", "",
        "[upstream only]", f"url = tls://{ctf.HOSTNAME}:853", "address = 127.0.0.1", ""]))
    conf_arg = "etc/../etc/stubborn.conf"
    target = tmp_path / "lists" / "log_list.json"
    log = open(tmp_path / "stubborn.log", "wb")
    proc = subprocess.Popen([stubborn_bin, "run", "-c", conf_arg] + (["-f"] if foreground else []),
                            cwd=tmp_path, env=web["env"], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    pids = []
    try:
        if not foreground:
            assert proc.wait(timeout=10) == 0
            deadline = time.monotonic() + 5
            while not pids and time.monotonic() < deadline:
                pids = _daemons(conf_arg)
                time.sleep(0.05)
            assert len(pids) == 1, pids
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (target.exists() and
                                                   target.read_bytes() == web["good"]):
            time.sleep(0.1)
        assert target.read_bytes() == web["good"], (tmp_path / "stubborn.log").read_text()
    finally:
        if foreground:
            proc.terminate()
            proc.wait(timeout=15)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.close()
    assert not any(_running(pid) for pid in pids), "the daemon did not stop"


# (server, path, scheme, what the message must mention): each one must
# leave the installed list alone, and say why.
UPDATE_FAILURES = {
    "404": ("ok", "/nothing-here.json", "https", r"404"),
    "not-json": ("ok", "/not-json", "https", r"json"),
    "malformed-list": ("ok", "/malformed.json", "https", r"operators|v3|log list"),
    "truncated-json": ("ok", "/truncated.json", "https", r"json"),
    "empty-body": ("ok", "/empty.json", "https", r"json|empty"),
    "untrusted-ca": ("untrusted", "/log_list.json", "https", r"chain|issuer|verif|certificate"),
    "wrong-hostname": ("wrongname", "/log_list.json", "https", r"hostname|name"),
    "plain-http": ("http", "/log_list.json", "http", r"https"),
    "tls-to-plain-http": ("http", "/log_list.json", "https", r"tls|ssl|handshake"),
}


def _installed_list(tmp_path, universe, age):
    """A list `age` seconds old installed in a directory of its own:
    (directory, list path, its bytes, conf naming it)."""
    lists = tmp_path / "lists"
    lists.mkdir()
    target = lists / "log_list.json"
    universe.write_log_list(target, timestamp=universe.now - age)
    return lists, target, target.read_bytes(), _conf(tmp_path, universe, target)


@pytest.mark.parametrize("case", sorted(UPDATE_FAILURES))
def test_update_failure_keeps_old_list(stubborn_bin, universe, web, tmp_path, case):
    server, path, scheme, why = UPDATE_FAILURES[case]
    lists, target, before, conf = _installed_list(tmp_path, universe, 10 * DAY)
    p = _update(stubborn_bin, web, web["servers"][server].url(path, scheme), conf)
    assert p.returncode != 0, (p.returncode, p.stdout, p.stderr)
    assert re.search(why, p.stderr, re.I), f"stderr does not say why ({why}):\n{p.stderr}"
    assert target.read_bytes() == before
    assert sorted(os.listdir(lists)) == ["log_list.json"]


def _refused_over_a_fresh_list(stubborn_bin, universe, web, tmp_path, path, why):
    """Fetch `path` over a day-old list: refused (exit 1, `why` said), the
    list in place untouched and no file left behind.  (target, its bytes,
    conf)."""
    lists, target, before, conf = _installed_list(tmp_path, universe, 1 * DAY)
    p = _update(stubborn_bin, web, web["servers"]["ok"].url(path), conf)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert why in p.stderr, p.stderr
    assert target.read_bytes() == before
    assert sorted(os.listdir(lists)) == ["log_list.json"]
    return target, before, conf


def test_a_list_dated_in_the_future_is_refused_and_holds_nothing_back(
        stubborn_bin, universe, web, tmp_path):
    # Installed, a list of next year would refuse every real list until
    # then as older than itself.
    target, before, conf = _refused_over_a_fresh_list(
        stubborn_bin, universe, web, tmp_path, "/future.json", "in the future")
    # One already in place (before this check) gives way to a real one,
    # and says so.
    universe.write_log_list(target, timestamp=universe.now + 180 * DAY)
    p = _update(stubborn_bin, web, web["servers"]["ok"].url("/log_list.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert target.read_bytes() == web["good"]
    assert "in the future: replaced" in p.stderr, p.stderr
    # Twelve hours ahead is clock skew, not the future.
    p = _update(stubborn_bin, web, web["servers"]["ok"].url("/soon.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert target.read_bytes() != web["good"]


def test_a_list_url_without_a_path_asks_for_slash(stubborn_bin, universe, web, tmp_path):
    # Not DoH's /dns-query: the conf check reads the URL with the same parser.
    lists, target, before, conf = _installed_list(tmp_path, universe, 1 * DAY)
    p = _update(stubborn_bin, web, web["servers"]["ok"].url(""), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert target.read_bytes() == web["good"]


def test_update_refuses_a_list_older_than_the_installed_one(stubborn_bin, universe, web,
                                                            tmp_path):
    # A stale mirror, or a server replaying an old list, must not undo a
    # newer list: logs retired since would count again.
    target, before, conf = _refused_over_a_fresh_list(
        stubborn_bin, universe, web, tmp_path, "/old.json", "older than the one installed")
    # The same older list is fine where nothing newer is in place.
    target.unlink()
    p = _update(stubborn_bin, web, web["servers"]["ok"].url("/old.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)


def test_update_refuses_a_list_past_ct_max_list_age(stubborn_bin, universe, web, tmp_path):
    # CT would be report-only with it at once: say so, rather than install
    # it and report success.
    lists = tmp_path / "lists"
    lists.mkdir()
    target = lists / "log_list.json"
    conf = _conf(tmp_path, universe, target)
    p = _update(stubborn_bin, web, web["servers"]["ok"].url("/stale.json"), conf)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert re.search(r"400 days old: past ct-max-list-age \(70 days\)", p.stderr), p.stderr
    assert not target.exists()
    assert sorted(os.listdir(lists)) == []


def test_a_list_without_its_own_date_is_dated_by_last_modified(stubborn_bin, universe, web,
                                                               tmp_path):
    # Apple's layout has no log_list_timestamp.  Dated by the fetch, a stale
    # mirror's list would look new every day and a replayed one newer than
    # the list in place: the server's Last-Modified dates it, and becomes
    # the file's modification time, by which the resolver dates it.
    lists = tmp_path / "lists"
    lists.mkdir()
    target = lists / "log_list.json"
    conf = _conf(tmp_path, universe, target)
    ok = web["servers"]["ok"]
    for path, why in (("/apple-undated.json", "no log_list_timestamp, and no Last-Modified"),
                      ("/apple-baddate.json", "a Last-Modified that is no HTTP date"),
                      ("/apple-stale.json", "100 days old: past ct-max-list-age")):
        p = _update(stubborn_bin, web, ok.url(path), conf)
        assert p.returncode == 1, (path, p.returncode, p.stdout, p.stderr)
        assert why in p.stderr, p.stderr
        assert not target.exists()
    p = _update(stubborn_bin, web, ok.url("/apple.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert "(Last-Modified)" in p.stdout, p.stdout
    assert target.read_bytes() == web["apple"]
    assert int(target.stat().st_mtime) == universe.now - 2 * DAY
    c = _run([stubborn_bin, "check-config", "-c", str(conf)])
    assert c.returncode == 0 and "days old" not in c.stderr, (c.stdout, c.stderr)
    # Older than the list in place, whichever layout that one has.
    for path in ("/apple-old.json", "/old.json"):
        p = _update(stubborn_bin, web, ok.url(path), conf)
        assert p.returncode == 1, (path, p.returncode, p.stdout, p.stderr)
        assert "older than the one installed" in p.stderr, p.stderr
        assert target.read_bytes() == web["apple"]
    # A dated list in place holds an undated one dated before it back too.
    universe.write_log_list(target, timestamp=universe.now - 1 * DAY)
    before = target.read_bytes()
    p = _update(stubborn_bin, web, ok.url("/apple.json"), conf)
    assert p.returncode == 1 and "older than the one installed" in p.stderr, p.stderr
    assert target.read_bytes() == before
    assert sorted(os.listdir(lists)) == ["log_list.json"]
    # The same list put in place by hand (dated by the copy, today) is no
    # rollback: fetched again, it is dated by its server.
    target.write_bytes(web["apple"])
    p = _update(stubborn_bin, web, ok.url("/apple.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert int(target.stat().st_mtime) == universe.now - 2 * DAY
    # But another list older than it is.
    p = _update(stubborn_bin, web, ok.url("/apple-old.json"), conf)
    assert p.returncode == 1 and "older than the one installed" in p.stderr, p.stderr
    # And the newer dated list replaces the undated one.
    p = _update(stubborn_bin, web, ok.url("/log_list.json"), conf)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert target.read_bytes() == web["good"]


def test_a_list_url_naming_an_ip_address_is_refused(stubborn_bin, universe, web, tmp_path):
    # The certificate names a host; and the conf's 'address =' advice would
    # not apply to a URL given on the command line.
    lists, target, before, conf = _installed_list(tmp_path, universe, 1 * DAY)
    port = web["servers"]["ok"].port
    p = _update(stubborn_bin, web, f"https://127.0.0.1:{port}/log_list.json", conf)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "URL needs a hostname, not an IP address\n" in p.stderr, p.stderr
    assert "address =" not in p.stderr, p.stderr
    assert target.read_bytes() == before
    # pin takes the address with --address, not from the conf either.
    p = _run([stubborn_bin, "pin", "https://[::1]/dns-query", "-c", str(conf)])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "URL needs a hostname, not an IP address\n" in p.stderr, p.stderr
    assert "address =" not in p.stderr, p.stderr


def test_check_config_warns_about_a_stale_list(stubborn_bin, universe, tmp_path):
    target = tmp_path / "log_list.json"
    universe.write_log_list(target, timestamp=universe.now - 100 * DAY)
    p = _run([stubborn_bin, "check-config", "-c", str(_conf(tmp_path, universe, target))])
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert re.search(r"is 100 days old \(ct-max-list-age is 70 days\): CT is report-only",
                     p.stderr), p.stderr
    universe.write_log_list(target)
    p = _run([stubborn_bin, "check-config", "-c", str(_conf(tmp_path, universe, target))])
    assert p.returncode == 0 and "days old" not in p.stderr, p.stderr


def test_update_connection_refused_keeps_old_list(stubborn_bin, universe, web, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    target = lists / "log_list.json"
    universe.write_log_list(target)
    before = target.read_bytes()
    port = servers.free_port(["127.0.0.1"])
    p = _update(stubborn_bin, web, f"https://localhost:{port}/log_list.json",
                _conf(tmp_path, universe, target))
    assert p.returncode != 0, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.strip()
    assert target.read_bytes() == before
    assert sorted(os.listdir(lists)) == ["log_list.json"]


# --- loading lists -----------------------------------------------------------

def _check(stubborn_bin, universe, preset, log_list):
    leaf = universe.preset(preset)
    p = _run([stubborn_bin, "check-cert", "--chain", str(leaf.chain_pem), "--host", ctf.HOSTNAME,
              "--ca-file", str(universe.root_pem), "--log-list", str(log_list),
              "--at", str(universe.check_time), "--policy", "chrome"])
    return ctf.parse_check_cert(p.returncode, p.stdout, p.stderr)


def _malformed(universe):
    good = json.dumps(universe.log_list())
    return {
        "not-json": "this is not JSON\n",
        "empty-file": "",
        "truncated": good[:len(good) // 2],
        "top-level-array": json.dumps([universe.log_list()]),
        "no-operators": json.dumps({"version": "1", "log_list_timestamp": "2026-01-01T00:00:00Z"}),
        "operators-not-array": json.dumps({"version": "1",
                                           "log_list_timestamp": "2026-01-01T00:00:00Z",
                                           "operators": "Alpha CT"}),
        "nul-byte": good[:40] + "\0" + good[40:],
    }


MALFORMED = ["not-json", "empty-file", "truncated", "top-level-array", "no-operators",
             "operators-not-array", "nul-byte"]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_list_is_bad_input(stubborn_bin, universe, tmp_path, case):
    path = tmp_path / "list.json"
    path.write_text(_malformed(universe)[case])
    r = _check(stubborn_bin, universe, "ok2", path)
    assert r.status == 2, r
    assert r.stderr.strip(), f"no message\n{r}"
    assert "verdict" not in r.checks, r


def _entry(ll, description):
    for op in ll["operators"]:
        for kind in ("logs", "tiled_logs"):
            for lg in op[kind]:
                if lg["description"] == description:
                    return lg
    raise KeyError(description)


def test_bad_entries_are_skipped_and_named(stubborn_bin, universe, tmp_path):
    """log_id that is not SHA-256(key), a key that is not base64, a key that
    is base64 but no SPKI: each entry is dropped with a message naming it,
    and the rest of the list still works."""
    bad = {
        "gamma_rsa": lambda e: e.update(log_id=universe.logs["alpha2"].log_id_b64),
        "delta_readonly": lambda e: e.update(key="not*base64!"),
        "gamma_odd": lambda e: e.update(key=base64.b64encode(b"\x30\x03\x02\x01\x01").decode()),
    }

    def edit(ll):
        for slug, change in bad.items():
            change(_entry(ll, universe.logs[slug].description))

    path = universe.write_log_list(tmp_path / "partly-bad.json", edit=edit)

    r = _check(stubborn_bin, universe, "ok2", path)
    assert r.status == 0, r
    assert r.checks.get("verdict") == "trusted", r
    for slug in bad:
        lg = universe.logs[slug]
        assert lg.description in r.stderr or lg.log_id_b64 in r.stderr, \
            f"nothing on stderr names the bad entry {lg.description!r}\n{r}"

    # A dropped entry is as good as absent: its SCTs are from an unknown log.
    for preset, slug in (("rsa", "gamma_rsa"), ("readonly", "delta_readonly")):
        r = _check(stubborn_bin, universe, preset, path)
        statuses = {s.get("log_id"): s.get("status") for s in r.scts}
        assert statuses.get(universe.logs[slug].log_id_b64) == ctf.UNKNOWN_LOG, r
        assert r.status == 1, r
        assert r.checks.get("verdict") == "rejected (ct)", r


def test_list_without_tiled_logs_arrays_loads(stubborn_bin, universe, tmp_path):
    # Lists from before static-ct-api have no tiled_logs at all.
    def edit(ll):
        for op in ll["operators"]:
            del op["tiled_logs"]
    path = universe.write_log_list(tmp_path / "no-tiled.json", edit=edit)
    r = _check(stubborn_bin, universe, "ok2", path)
    assert r.status == 0, r
    assert r.checks.get("verdict") == "trusted", r


def test_unknown_fields_are_ignored(stubborn_bin, universe, tmp_path):
    # Forward compatibility, as Apple's list shows: extra keys at every level.
    def edit(ll):
        ll["$schema"] = "https://example.test/schema.json"
        ll["assetVersion"] = 7
        for op in ll["operators"]:
            op["future_field"] = {"x": [1, 2]}
            for lg in op["logs"] + op["tiled_logs"]:
                lg["log_type"] = "test"
                lg["dns"] = "ct.example.test"
                for st in lg["state"].values():
                    st["version"] = "42"
    path = universe.write_log_list(tmp_path / "extra.json", edit=edit)
    r = _check(stubborn_bin, universe, "ok2", path)
    assert r.status == 0, r
    assert r.checks.get("verdict") == "trusted", r
