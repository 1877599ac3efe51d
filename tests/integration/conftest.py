"""Fixtures: a session PKI, unbound DoT/DoH upstreams on 127.0.0.x, dnsdist,
knot-resolver and scripted hostile servers, and stubborn in front of them; Certificate
Transparency logs of our own and certspotter watching them.  Every process is started here and stopped here by PID,
whatever the test's outcome; when a test fails its processes' logs are
attached to the report."""

import os
import socket
from pathlib import Path

import pytest

import ct_log
import hostile as hostile_mod
import pki
import servers

REPO_TOP = Path(__file__).resolve().parents[2]


def _attach(request, title, proc):
    """Register a process whose log belongs in the report if the test fails."""
    node = request.node
    if not hasattr(node, "_logged_processes"):
        node._logged_processes = []
    node._logged_processes.append((title, proc))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for title, proc in getattr(item, "_logged_processes", []):
        text = proc.log_text()
        # stubborn's conf is short and is half the story; unbound's is the
        # same generated zone every time.
        conf = getattr(proc, "conf", None) if isinstance(proc, servers.Stubborn) else None
        if conf is not None and Path(conf).exists():
            text = f"--- conf {conf}\n{Path(conf).read_text()}--- log\n{text}"
        rep.sections.append((f"{title} ({rep.when})", text or "(empty log)"))


def _tool(name, env_var):
    path = servers.find_tool(name, env_var)
    if not path:
        pytest.fail(f"{name} not found (install it, or set {env_var})", pytrace=False)
    return path


def _stubborn_path():
    return os.path.abspath(os.environ.get("STUBBORN") or str(REPO_TOP / "stubborn"))


def pytest_sessionstart(session):
    # One clear message instead of every test erroring on the same fixture.
    path = _stubborn_path()
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        pytest.exit(f"stubborn binary not found at {path}: build it, or set "
                    f"STUBBORN to its path", returncode=1)


@pytest.fixture(scope="session")
def stubborn_bin():
    return _stubborn_path()


@pytest.fixture(scope="session")
def unbound_bin():
    return _tool("unbound", "UNBOUND")


@pytest.fixture(scope="session")
def kdig_bin():
    return _tool("kdig", "KDIG")


@pytest.fixture(scope="session")
def dig_bin():
    return _tool("dig", "DIG")


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return pki.build(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def ipv6():
    return servers.ipv6_loopback_usable()


class _Addresses:
    """Hands out 127.0.0.2, .3, ... so each upstream of a test has its own
    address, as real providers do."""

    def __init__(self):
        self.next = 2

    def take(self):
        addr = f"127.0.0.{self.next}"
        self.next += 1
        return addr


@pytest.fixture
def addresses():
    return _Addresses()


@pytest.fixture
def upstream(request, unbound_bin, certs, tmp_path, addresses):
    """Factory: upstream(name, cert="good", transports=("dot",)) starts an
    unbound whose who.zone.test marker is `name` (also its stubborn section
    name), serving DoT, DoH and/or plain DNS; .spec() points at the first."""
    started = []

    def start(name, cert="good", transports=("dot",), extra_conf=()):
        u = servers.Unbound(unbound_bin, name, addresses.take(), certs[cert],
                            tmp_path / f"unbound-{name}", transports, extra_conf)
        started.append(u)
        ports = " ".join(f"{t}:{p}" for t, p in u.ports.items())
        _attach(request, f"unbound {name} [{cert}] {u.address} {ports}", u)
        return u.start()

    yield start
    for u in reversed(started):
        u.stop()


@pytest.fixture
def closed_upstream(addresses):
    """Factory: an upstream section pointing at an address and port where
    nothing listens, so connecting fails at once."""
    def make(name, **kw):
        addr = addresses.take()
        return servers.UpstreamSpec(name, addr, servers.free_port([addr]), **kw)
    return make


@pytest.fixture
def silent_upstream(addresses):
    """Factory: an upstream that completes the TCP handshake (the kernel does
    that from the listen backlog) and then never says a word, as a wedged
    server or a black-holing middlebox does."""
    socks = []

    def make(name, **kw):
        addr = addresses.take()
        port = servers.free_port([addr])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(sock)
        sock.bind((addr, port))
        sock.listen(64)
        return servers.UpstreamSpec(name, addr, port, **kw)

    yield make
    for sock in socks:
        sock.close()


@pytest.fixture
def hostile(request, certs, addresses):
    """Factory: hostile(script, name="hostile", delivery="record") starts a
    misbehaving DoT server (hostile.HostileDot) with the good certificate;
    its .spec() is the [upstream] section for stubborn."""
    started = []

    def start(script, name="hostile", delivery="record"):
        h = hostile_mod.HostileDot(name, addresses.take(), certs["good"], script,
                                   delivery)
        started.append(h)
        _attach(request, f"hostile {name} {h.address}:{h.port}", h)
        return h.start()

    yield start
    problems = []
    for h in reversed(started):
        problems += h.stop()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _doh_fronts(request, certs, tmp_path, addresses, cls, tool, env_var):
    """A factory fixture's body: start(name, backend) starts `cls` (a
    servers.DohFront) in front of `backend`, an unbound serving plain DNS;
    its .spec() is the DoH [upstream] section.  The binary is looked up
    only when called, so the rest of the suite does not need it."""
    started = []

    def start(name, backend, cert="good"):
        binary = _tool(tool, env_var)
        d = cls(binary, name, addresses.take(), certs[cert], backend,
                tmp_path / f"{tool}-{name}")
        started.append(d)
        _attach(request, f"{tool} {name} {d.address}:{d.port}", d)
        return d.start()

    yield start
    for d in reversed(started):
        d.stop()


@pytest.fixture
def dnsdist(request, certs, tmp_path, addresses):
    """Factory: dnsdist(name, backend), dnsdist as a DoH server."""
    yield from _doh_fronts(request, certs, tmp_path, addresses, servers.Dnsdist,
                           "dnsdist", "DNSDIST")


@pytest.fixture
def kresd(request, certs, tmp_path, addresses):
    """Factory: kresd(name, backend), knot-resolver as a DoH server."""
    yield from _doh_fronts(request, certs, tmp_path, addresses, servers.Kresd,
                           "kresd", "KRESD")


@pytest.fixture
def hostile_h2(request, certs, addresses):
    """Factory: hostile_h2(script, name="hostile", cert="good", alpn=("h2",),
    max_streams=None) starts a scripted DoH server (hostile_h2.HostileDoh);
    its .spec() is the [upstream] section for stubborn."""
    started = []

    def start(script, name="hostile", cert="good", alpn=("h2",), max_streams=None):
        # Imported here: only the DoH tests need python3-h2.
        try:
            import hostile_h2 as hostile_h2_mod
        except ImportError as e:
            pytest.fail(f"the scripted DoH server needs python3-h2: {e}", pytrace=False)
        h = hostile_h2_mod.HostileDoh(name, addresses.take(), certs[cert], script,
                                      alpn=alpn, max_streams=max_streams)
        started.append(h)
        _attach(request, f"hostile-h2 {name} {h.address}:{h.port}", h)
        return h.start()

    yield start
    problems = []
    for h in reversed(started):
        problems += h.stop()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def stubborn(request, stubborn_bin, certs, tmp_path, ipv6, upstream, hostile,
             dnsdist, kresd, hostile_h2):
    """Factory: stubborn(specs, verbose=False, **conf options) writes a conf,
    starts `stubborn run -c CONF -f` (with -v when verbose) and returns once
    it has logged 'ready'.  Teardown sends SIGTERM and requires exit status
    0, which is also how a sanitizer build reports leaks."""
    # Depending on the server fixtures makes pytest stop stubborn before
    # its upstreams.
    started = []

    def start(specs, ca_file=None, verbose=False, **kw):
        n = len(started)
        listen = ["127.0.0.1"] + (["::1"] if ipv6 else [])
        port = servers.free_port(listen)
        text = servers.stubborn_conf(port, specs, ca_file or certs.root_pem, ipv6, **kw)
        s = servers.Stubborn(stubborn_bin, tmp_path / f"stubborn-{n}", port, text,
                             verbose=verbose)
        started.append(s)
        _attach(request, f"stubborn #{n}", s)
        return s.start()

    yield start

    problems = []
    for s in started:
        status, hung = s.stop()
        if not s.ready:
            continue  # its failure to start was already reported
        if hung:
            problems.append(f"{s.conf}: stubborn did not exit within "
                            f"{servers.STOP_TIMEOUT}s of SIGTERM")
        elif status != 0:
            problems.append(f"{s.conf}: stubborn exited with status {status} "
                            f"after SIGTERM (expected 0)")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def certspotter_bin():
    """certspotter (Debian package certspotter), or the test is skipped:
    only the CT-monitoring tests need it."""
    path = servers.find_tool("certspotter", "CERTSPOTTER")
    if not path:
        pytest.skip("certspotter not installed (Debian package certspotter, "
                    "or set CERTSPOTTER)")
    return path


@pytest.fixture
def ct_logs(request, tmp_path):
    """Factory: ct_logs(name="log", **CTLog options) starts an RFC 6962 log
    (ct_log.CTLog) on 127.0.0.1; teardown stops it and requires every
    server thread to have ended."""
    started = []

    def start(name="log", **kw):
        lg = ct_log.CTLog(tmp_path / f"ctlog-{name}", name=name, **kw)
        started.append(lg)
        _attach(request, f"CT log {name}", lg)
        return lg.start()

    yield start
    problems = []
    for lg in reversed(started):
        problems += lg.stop()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def certspotter(request, certspotter_bin, tmp_path, ct_logs):
    """Factory: certspotter(logs_json, watchlist, script=None, **options)
    starts certspotter (ct_log.Certspotter) in a directory of its own.
    Teardown stops it by PID with SIGTERM and requires exit status 0 from
    any that was still running (one that exited earlier is the test's to
    judge)."""
    # Depending on ct_logs makes pytest stop certspotter before the logs.
    started = []

    def start(logs, watchlist, script=None, **kw):
        c = ct_log.Certspotter(certspotter_bin, tmp_path / f"certspotter-{len(started)}",
                               logs, watchlist, script, **kw)
        started.append(c)
        _attach(request, f"certspotter #{len(started) - 1}", c)
        return c.start()

    yield start
    problems = []
    for c in started:
        if not c.alive():
            continue
        status, hung = c.stop()
        if hung:
            problems.append(f"certspotter did not exit within {ct_log.STOP_TIMEOUT}s "
                            f"of SIGTERM")
        elif status != 0:
            problems.append(f"certspotter exited with status {status} after SIGTERM")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
