"""CT in the live trust gate: unbound upstreams present generated
certificates with embedded SCTs, and stubborn, with `ct = enforce`, must
refuse a non-compliant one before any query reaches it, report it as a
trust incident with reason "ct" and every SCT's verdict, quarantine it and
answer from the next upstream.  `report`, a stale or missing log list and a
per-upstream override relax that, each in its documented way."""

import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import dns.exception
import pytest

import clients
import ct_fixture as ctf
import servers

QUARANTINE = 3600


@pytest.fixture(scope="module")
def universe(tmp_path_factory):
    u = ctf.Universe()
    u.write(tmp_path_factory.mktemp("ct"))
    return u


def _attach(request, title, proc):
    # The conftest report hook attaches the logs of processes listed here
    # when a test fails.
    node = request.node
    if not hasattr(node, "_logged_processes"):
        node._logged_processes = []
    node._logged_processes.append((title, proc))


@pytest.fixture
def ct_upstream(request, unbound_bin, addresses, tmp_path, universe):
    """Factory: ct_upstream(name, preset) starts unbound serving that
    preset's leaf (chain = leaf + the universe's intermediate)."""
    started = []

    def start(name, preset):
        leaf = universe.preset(preset)
        u = servers.Unbound(unbound_bin, name, addresses.take(), leaf,
                            tmp_path / f"unbound-{name}")
        started.append(u)
        _attach(request, f"unbound {name} [{preset}] {u.address}", u)
        return u.start()

    yield start
    for u in reversed(started):
        u.stop()


class SServer:
    """`openssl s_server` presenting a TLS-SCT preset: the only test server
    here that can send the signed_certificate_timestamp extension.  It
    speaks no DNS; whatever it receives after the handshake lands in its
    log, which is how a test sees that stubborn let the handshake through."""

    def __init__(self, openssl, name, address, leaf, intermediate_pem, workdir, tls13=True):
        self.name = name
        self.address = address
        self.leaf = leaf
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # Received application data goes to stdout, diagnostics to stderr.
        self.out = self.dir / "s_server.out"
        self.err = self.dir / "s_server.err"
        self.port = servers.free_port([address])
        # SERVERINFO reaches TLS 1.2 clients only; SERVERINFOV2 with its
        # context also puts the extension in a TLS 1.3 Certificate message.
        info = leaf.directory / ("serverinfo-v2.pem" if tls13 else "serverinfo.pem")
        self.cmd = [openssl, "s_server", "-accept", f"{address}:{self.port}",
                    "-cert", str(leaf.leaf_pem), "-key", str(leaf.key_pem),
                    "-cert_chain", str(intermediate_pem), "-serverinfo", str(info), "-quiet"]
        if not tls13:
            self.cmd.append("-no_tls1_3")
        self.proc = None

    def spec(self, pins=(), extra=()):
        return servers.UpstreamSpec(self.name, self.address, self.port, ctf.HOSTNAME,
                                    tuple(pins), None, tuple(extra))

    def start(self):
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            # stdin stays open: s_server stops at end of input.
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=out,
                                         stderr=err)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + servers.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"s_server exited with {self.proc.returncode}:\n"
                                   f"{self.log_text()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as raw:
                    with ctx.wrap_socket(raw, server_hostname=ctf.HOSTNAME):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"s_server not accepting TLS within {servers.START_TIMEOUT}s")
        return self

    def received(self):
        return self.out.read_bytes()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=servers.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=servers.STOP_TIMEOUT)

    def log_text(self):
        return "".join(f.read_bytes().decode(errors="replace")
                       for f in (self.err, self.out) if f.exists())


@pytest.fixture(scope="module")
def openssl_bin():
    path = servers.find_tool("openssl", "OPENSSL")
    if not path:
        pytest.fail("openssl not found (install it, or set OPENSSL)", pytrace=False)
    return path


@pytest.fixture
def tls_sct_server(request, openssl_bin, addresses, tmp_path, universe):
    """Factory: tls_sct_server(name, preset, tls13=True) -> SServer."""
    started = []

    def start(name, preset, tls13=True):
        leaf = universe.preset(preset)
        s = SServer(openssl_bin, name, addresses.take(), leaf,
                    universe.directory / "intermediate.pem", tmp_path / f"s_server-{name}", tls13)
        started.append(s)
        _attach(request, f"s_server {name} [{preset}] {s.address}", s)
        return s.start()

    yield start
    for s in reversed(started):
        s.stop()


def ct_conf(port, specs, universe, ipv6, ct="enforce", log_list=None, trust=()):
    """A conf with CT on: servers.stubborn_conf pins `ct = off` for the
    suites that are not about CT."""
    lines = ["[server]", f"listen = 127.0.0.1:{port}"]
    if ipv6:
        lines.append(f"listen = [::1]:{port}")
    lines += ["", "[trust]", f"ca-file = {universe.root_pem}", f"quarantine = {QUARANTINE}"]
    if ct is not None:
        lines.append(f"ct = {ct}")
    lines.append(f"ct-log-list = {log_list or universe.log_list_path}")
    lines += list(trust)
    text = "\n".join(lines) + "\n"
    for s in specs:
        text += "\n" + s.section()
    return text


@pytest.fixture
def ct_stubborn(request, stubborn_bin, tmp_path, ipv6, ct_upstream, tls_sct_server, universe):
    """Factory: ct_stubborn(specs, **ct_conf options) starts stubborn and
    returns once it is ready; teardown requires exit status 0 on SIGTERM.
    Depends on the upstream factories so stubborn stops before them."""
    started = []

    def start(specs, **kw):
        n = len(started)
        listen = ["127.0.0.1"] + (["::1"] if ipv6 else [])
        port = servers.free_port(listen)
        s = servers.Stubborn(stubborn_bin, tmp_path / f"stubborn-{n}", port,
                             ct_conf(port, specs, universe, ipv6, **kw))
        started.append(s)
        _attach(request, f"stubborn #{n}", s)
        return s.start()

    yield start
    problems = []
    for s in started:
        status, hung = s.stop()
        if not s.ready:
            continue
        if hung:
            problems.append(f"{s.conf}: stubborn did not exit within "
                            f"{servers.STOP_TIMEOUT}s of SIGTERM")
        elif status != 0:
            problems.append(f"{s.conf}: stubborn exited with status {status} after SIGTERM")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _who(port, tag, tcp=False):
    q, r = clients.ask(port, servers.who_name(tag), "TXT", tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == 0, clients.rcode_text(r)
    return clients.answer_strings(r, "TXT")


def _mine(s, name):
    return [i for i in s.incidents() if i.get("upstream") == name]


def _check_ct_incident(inc, up, leaf, report_only):
    assert inc["event"] == "trust-incident"
    assert inc["reason"] == "ct", inc
    assert inc["upstream"] == up.name
    assert inc["host"] == ctf.HOSTNAME
    assert inc["address"] == f"{up.address}:{up.port}"
    assert inc["spki_pin"] == leaf.pin
    assert inc["leaf_sha256"].lower() == leaf.leaf_sha256
    assert isinstance(inc.get("detail"), str) and inc["detail"].strip(), inc
    assert bool(inc.get("report_only")) is report_only, inc
    if report_only:
        # The upstream stays in use: nothing was quarantined.
        assert inc["quarantine_seconds"] == 0, inc
    scts = inc.get("scts")
    assert isinstance(scts, list), inc
    problems = ctf.sct_mismatches(scts, leaf.expected_scts())
    assert not problems, "\n".join(problems) + f"\n{inc}"
    for s in scts:
        assert set(s) >= {"source", "log_id", "description", "operator", "timestamp",
                          "status"}, s


# Presets a live handshake must refuse under the default (chrome) policy.
REFUSED = ["one_sct", "unknown_log", "future", "no_scts"]


@pytest.mark.parametrize("preset", REFUSED)
def test_enforce_refuses_noncompliant_upstream(ct_upstream, ct_stubborn, universe, preset):
    bad_leaf = universe.preset(preset)
    bad = ct_upstream("first", preset)
    good = ct_upstream("second", "ok2")
    # Pinned, so CT is the only step the first upstream fails.
    s = ct_stubborn([bad.spec(pins=[bad_leaf.pin]), good.spec()])

    assert _who(s.port, "t1") == ["second"]
    q, r = clients.ask(s.port, servers.zone_name(7), "A", tcp=True)
    assert clients.answer_strings(r, "A") == [servers.zone_a(7)]
    assert bad.queries_seen() == 0, bad.queries()
    assert good.queries_seen() >= 2

    mine = _mine(s, "first")
    assert mine, f"no trust-incident line for 'first':\n{s.log_text()}"
    assert all(i.get("upstream") == "first" for i in s.incidents()), s.incidents()
    _check_ct_incident(mine[0], bad, bad_leaf, report_only=False)
    assert mine[0]["quarantine_seconds"] == QUARANTINE

    # Quarantined: no new handshake with it, so no new incident either.
    seen = len(s.incidents())
    for i in range(4):
        assert _who(s.port, f"after{i}", tcp=bool(i % 2)) == ["second"]
    assert bad.queries_seen() == 0, bad.queries()
    assert len(s.incidents()) == seen


# Presets a live handshake must accept; retired_before only because the
# SCT predates the retirement, tiled because static-ct-api logs count.
ACCEPTED = ["ok2", "ok3_long", "retired_before", "tiled", "rsa"]


@pytest.mark.parametrize("preset", ACCEPTED)
def test_enforce_accepts_compliant_upstream(ct_upstream, ct_stubborn, universe, preset):
    first = ct_upstream("first", preset)
    s = ct_stubborn([first.spec(pins=[universe.preset(preset).pin])])
    assert _who(s.port, "ok") == ["first"]
    assert s.incidents() == []


@pytest.mark.parametrize("preset", ["ok2", "exact_180", "one_operator"])
def test_apple_policy_in_the_gate(ct_upstream, ct_stubborn, universe, preset):
    # exact_180 passes Chrome's rule but not Apple's, which counts both ends
    # of the validity: under ct-policy = apple it is refused.
    expected = "first" if ctf.PRESETS[preset].apple else "second"
    first = ct_upstream("first", preset)
    second = ct_upstream("second", "ok2")
    s = ct_stubborn([first.spec(), second.spec()], trust=["ct-policy = apple"])
    assert _who(s.port, "apple") == [expected]
    if expected == "second":
        inc = _mine(s, "first")
        assert inc and inc[0]["reason"] == "ct", s.incidents()
        assert first.queries_seen() == 0
    else:
        assert s.incidents() == []


def test_report_uses_noncompliant_upstream_and_logs_it(ct_upstream, ct_stubborn, universe):
    leaf = universe.preset("one_sct")
    bad = ct_upstream("first", "one_sct")
    good = ct_upstream("second", "ok2")
    s = ct_stubborn([bad.spec(pins=[leaf.pin]), good.spec()], ct="report")
    assert _who(s.port, "rep") == ["first"]
    assert bad.queries_seen() >= 1
    mine = _mine(s, "first")
    assert mine, f"no trust-incident line for 'first':\n{s.log_text()}"
    _check_ct_incident(mine[0], bad, leaf, report_only=True)


def _warned_report_only(s):
    lines = [l for l in s.log_text().splitlines()
             if re.search(r"log list", l, re.I) and re.search(r"report-only", l, re.I)]
    return lines


# ct-max-list-age in each accepted unit, against a list dated 100 days ago.
@pytest.mark.parametrize("max_age,stale", [
    pytest.param("70d", True, id="70d"),
    pytest.param(f"{70 * 24}h", True, id="1680h"),
    pytest.param(f"{70 * 24 * 60}m", True, id="100800m"),
    pytest.param("200d", False, id="200d"),
    pytest.param(str(200 * 86400), False, id="17280000s-bare"),
    pytest.param(f"{200 * 86400}s", False, id="17280000s"),
])
def test_stale_list_turns_enforce_into_report(ct_upstream, ct_stubborn, universe, tmp_path,
                                             max_age, stale):
    old = universe.write_log_list(tmp_path / "stale.json", timestamp=universe.now - 100 * 86400)
    leaf = universe.preset("one_sct")
    bad = ct_upstream("first", "one_sct")
    good = ct_upstream("second", "ok2")
    s = ct_stubborn([bad.spec(pins=[leaf.pin]), good.spec()], log_list=old,
                    trust=[f"ct-max-list-age = {max_age}"])
    if stale:
        assert _who(s.port, "stale") == ["first"]
        assert _warned_report_only(s), f"no 'log list ... report-only' warning:\n{s.log_text()}"
        # Whatever it logs about the upstream must not claim enforcement.
        for inc in _mine(s, "first"):
            assert inc.get("report_only") is True, inc
    else:
        assert _who(s.port, "fresh") == ["second"]
        assert bad.queries_seen() == 0
        assert not _warned_report_only(s), s.log_text()


def test_missing_list_means_no_ct_check_and_says_so(ct_upstream, ct_stubborn, universe,
                                                    tmp_path):
    # With nothing to check SCTs against, CT is not checked at all (the
    # README's rule): the warning says exactly that, and no incident
    # pretends a check ran.
    leaf = universe.preset("one_sct")
    bad = ct_upstream("first", "one_sct")
    good = ct_upstream("second", "ok2")
    s = ct_stubborn([bad.spec(pins=[leaf.pin]), good.spec()],
                    log_list=tmp_path / "absent" / "log_list.json")
    assert _who(s.port, "nolist") == ["first"]
    warned = [l for l in s.log_text().splitlines()
              if "no usable CT log list" in l and "not checked for CT" in l]
    assert warned, s.log_text()
    assert _mine(s, "first") == [], s.incidents()


@pytest.mark.parametrize("global_ct,first_ct,answers,incident", [
    pytest.param("enforce", "off", "first", None, id="enforce-first-off"),
    pytest.param("enforce", "report", "first", True, id="enforce-first-report"),
    pytest.param("report", "enforce", "second", False, id="report-first-enforce"),
    pytest.param("off", "enforce", "second", False, id="off-first-enforce"),
])
def test_per_upstream_ct_overrides_trust(ct_upstream, ct_stubborn, universe,
                                         global_ct, first_ct, answers, incident):
    leaf = universe.preset("one_sct")
    bad = ct_upstream("first", "one_sct")
    good = ct_upstream("second", "ok2")
    s = ct_stubborn([bad.spec(pins=[leaf.pin], extra=[f"ct = {first_ct}"]), good.spec()],
                    ct=global_ct)
    assert _who(s.port, "override") == [answers]
    mine = _mine(s, "first")
    if incident is None:
        assert s.incidents() == [], s.incidents()
    else:
        assert mine, f"no trust-incident line for 'first':\n{s.log_text()}"
        _check_ct_incident(mine[0], bad, leaf, report_only=incident)
    if answers == "second":
        assert bad.queries_seen() == 0, bad.queries()


def test_pin_command_reports_ct(stubborn_bin, ct_upstream, universe, tmp_path):
    u = ct_upstream("first", "ok2")
    conf = tmp_path / "pin.conf"
    conf.write_text(ct_conf(53, [u.spec()], universe, False))
    cmd = [stubborn_bin, "pin", f"tls://{ctf.HOSTNAME}:{u.port}", "--address", u.address,
           "--ca-file", str(universe.root_pem), "-c", str(conf)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert universe.preset("ok2").pin in p.stdout, p.stdout
    # Printed as a conf comment today ("# ct: ..."); the contract is only
    # that a ct line sits beside the pins.
    assert re.search(r"^(#\s*)?ct: ", p.stdout, re.M), p.stdout


@pytest.mark.parametrize("ct,status", [("enforce", 1), ("report", 0)])
def test_pin_command_ct_failure_status(stubborn_bin, ct_upstream, universe, tmp_path, ct, status):
    # The pins are printed either way; exit 1 says the gate would refuse
    # the chain (CLI contract: 1 when a check failed).
    u = ct_upstream("first", "one_sct")
    conf = tmp_path / "pin.conf"
    conf.write_text(ct_conf(53, [u.spec()], universe, False, ct=ct))
    cmd = [stubborn_bin, "pin", f"tls://{ctf.HOSTNAME}:{u.port}", "--address", u.address,
           "--ca-file", str(universe.root_pem), "-c", str(conf)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == status, (p.returncode, p.stdout, p.stderr)
    assert universe.preset("one_sct").pin in p.stdout, p.stdout
    assert re.search(r"^# ct: FAIL ", p.stdout, re.M), p.stdout


# --- SCTs in the TLS extension ------------------------------------------------

@pytest.mark.parametrize("preset,tls13", [
    pytest.param("tls_one", True, id="tls_one-tls1.3"),
    pytest.param("tls_one", False, id="tls_one-tls1.2"),
    pytest.param("tls_retired", True, id="tls_retired-tls1.3"),
    pytest.param("tls_same_log", True, id="tls_same_log-tls1.3"),
])
def test_tls_extension_scts_too_few_are_refused(tls_sct_server, ct_upstream, ct_stubborn,
                                                universe, preset, tls13):
    leaf = universe.preset(preset)
    bad = tls_sct_server("first", preset, tls13)
    good = ct_upstream("second", "ok2")
    s = ct_stubborn([bad.spec(pins=[leaf.pin]), good.spec()])
    assert _who(s.port, "tls") == ["second"]
    assert bad.received() == b"", "query bytes reached the refused upstream"
    mine = _mine(s, "first")
    assert mine, f"no trust-incident line for 'first':\n{s.log_text()}"
    # The TLS SCTs must be in the incident with source "tls".
    _check_ct_incident(mine[0], bad, leaf, report_only=False)


@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
def test_tls_extension_scts_suffice(tls_sct_server, ct_stubborn, universe, tls13):
    leaf = universe.preset("tls_ok")
    first = tls_sct_server("first", "tls_ok", tls13)
    s = ct_stubborn([first.spec(pins=[leaf.pin])])
    # s_server answers no DNS: the query itself can only time out or fail.
    # What matters is that stubborn sent it, i.e. passed the gate.
    try:
        clients.ask(s.port, servers.who_name("tlsok"), "TXT", tcp=True, timeout=2)
    except (dns.exception.Timeout, OSError, EOFError):
        pass
    deadline = time.monotonic() + 5
    while not first.received() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.received(), f"no query reached the upstream:\n{s.log_text()}"
    assert s.incidents() == [], s.incidents()
