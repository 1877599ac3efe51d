"""The metrics endpoint: `metrics = ADDR:PORT` serves Prometheus text on
/metrics and a health verdict on /healthz.  The metric names and what each
counts are a contract (README, "Metrics and health"), so a known sequence of
queries must leave exactly the numbers it implies, and the page must parse
as what Prometheus scrapes."""

import http.client
import os
import re
import socket
import subprocess
import time

import dns.message
import dns.query
import dns.rcode
import pytest

import clients
import servers
import slow

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    # Reported by the fixture below as a setup failure, not a collection
    # error that would hide the rest of the suite.
    text_string_to_metric_families = None

HTTP_TIMEOUT = 5.0

# Family names as prometheus_client reports them (a counter's family drops
# its _total suffix) with their type: the whole set, since these names are
# what dashboards and alerts are written against.
FAMILIES = {
    "stubborn_queries": "counter",
    "stubborn_refused": "counter",
    "stubborn_malformed": "counter",
    "stubborn_cache_hits": "counter",
    "stubborn_cache_misses": "counter",
    "stubborn_cache_entries": "gauge",
    "stubborn_coalesced": "counter",
    "stubborn_stale_answers": "counter",
    "stubborn_servfail": "counter",
    "stubborn_shed": "counter",
    "stubborn_upstream_queries": "counter",
    "stubborn_upstream_answers": "counter",
    "stubborn_upstream_errors": "counter",
    "stubborn_upstream_handshakes": "counter",
    "stubborn_trust_incidents": "counter",
    "stubborn_upstream_state": "gauge",
    "stubborn_upstream_rtt_seconds": "histogram",
    "stubborn_ct_log_list_age_seconds": "gauge",
    "stubborn_denylist_keys": "gauge",
    "stubborn_ct_watch_incidents": "counter",
}
REASONS = ("chain", "hostname", "pin", "ct", "denied")
STATES = ("up", "down", "quarantined")
RTT_FIRST_BOUND, RTT_LAST_BOUND = 0.001, 1.5

# Shorter than a DNS header: stubborn must drop it without a word.
RUNT = b"\x12\x34\x01\x00\x00"


@pytest.fixture(autouse=True)
def _needs_prometheus_client():
    if text_string_to_metric_families is None:
        pytest.fail("the metrics tests need python3-prometheus-client", pytrace=False)


def _metrics_stubborn(stubborn, specs, **kw):
    """stubborn with its metrics endpoint on a port of its own; returns
    (stubborn, metrics port)."""
    port = servers.free_port(["127.0.0.1"])
    extra = list(kw.pop("server_extra", ())) + [f"metrics = 127.0.0.1:{port}"]
    s = stubborn(specs, server_extra=extra, **kw)
    # Never the DNS port: the two listeners would collide on TCP.
    assert port != s.port
    return s, port


def _get(port, path, method="GET"):
    """(status, headers, body text) of one HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Scrape:
    """One /metrics page, parsed the way Prometheus' own client library
    parses it, with samples looked up by name and labels."""

    def __init__(self, text):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for fam in self.families.values():
            for smp in fam.samples:
                key = (smp.name, frozenset(smp.labels.items()))
                assert key not in self.samples, f"sample given twice: {smp}\n{text}"
                self.samples[key] = smp.value

    def __call__(self, name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels}:\n{self.text}"
        return self.samples[key]

    def labelled(self, name):
        """{labels: value} of every sample called `name`."""
        return {k[1]: v for k, v in self.samples.items() if k[0] == name}


def _ctype(headers):
    return {k.lower(): v for k, v in headers.items()}.get("content-type", "")


def _scrape(port):
    status, headers, body = _get(port, "/metrics")
    assert status == 200, (status, body)
    assert _ctype(headers).startswith("text/plain"), headers
    return Scrape(body)


def _check_exposition(m, upstreams):
    """The page as a whole: every contract family present with HELP and
    TYPE, each declared once, and a sample for every label combination the
    contract promises, so a series never appears only once it is nonzero."""
    for name, kind in FAMILIES.items():
        assert name in m.families, f"family {name} missing:\n{m.text}"
        fam = m.families[name]
        assert fam.type == kind, (name, fam.type)
        assert fam.documentation.strip(), f"{name} has no HELP text"
    # A sample without TYPE would make the parser invent an 'unknown'
    # family of that name: any family beyond the contract means exactly that.
    assert set(m.families) == set(FAMILIES), sorted(set(m.families) - set(FAMILIES))
    # The parser quietly merges repeated HELP/TYPE lines; Prometheus rejects
    # a page that has them.
    for what in ("HELP", "TYPE"):
        declared = re.findall(rf"^# {what} (\S+)", m.text, re.M)
        dup = {n for n in declared if declared.count(n) > 1}
        assert not dup, f"# {what} repeated for {sorted(dup)}"

    assert set(m.labelled("stubborn_queries_total")) == {
        frozenset({("protocol", p)}) for p in ("udp", "tcp")}
    for name in ("stubborn_upstream_queries_total", "stubborn_upstream_answers_total",
                 "stubborn_upstream_errors_total", "stubborn_upstream_handshakes_total",
                 "stubborn_upstream_rtt_seconds_count", "stubborn_upstream_rtt_seconds_sum"):
        assert set(m.labelled(name)) == {frozenset({("upstream", u)}) for u in upstreams}, name
    assert set(m.labelled("stubborn_trust_incidents_total")) == {
        frozenset({("upstream", u), ("reason", r)}) for u in upstreams for r in REASONS}
    states = m.labelled("stubborn_upstream_state")
    assert set(states) == {
        frozenset({("upstream", u), ("state", st)}) for u in upstreams for st in STATES}
    for u in upstreams:
        mine = [v for k, v in states.items() if ("upstream", u) in k]
        # A state gauge: exactly one of the three is set.
        assert sorted(mine) == [0, 0, 1], (u, states)
    for u in upstreams:
        _check_histogram(m, u)


def _check_histogram(m, upstream):
    buckets = {dict(k)["le"]: v
               for k, v in m.labelled("stubborn_upstream_rtt_seconds_bucket").items()
               if dict(k)["upstream"] == upstream}
    assert "+Inf" in buckets, buckets
    bounds = sorted(float(le) for le in buckets if le != "+Inf")
    assert bounds[0] == RTT_FIRST_BOUND and bounds[-1] == RTT_LAST_BOUND, bounds
    counts = [buckets[le] for le in sorted((le for le in buckets if le != "+Inf"), key=float)]
    counts.append(buckets["+Inf"])
    # Cumulative buckets never decrease, and +Inf is the count.
    assert counts == sorted(counts), (upstream, buckets)
    assert buckets["+Inf"] == m("stubborn_upstream_rtt_seconds_count", upstream=upstream)
    assert m("stubborn_upstream_rtt_seconds_sum", upstream=upstream) >= 0


def _a(port, i, tcp=False):
    q, r = clients.ask(port, servers.zone_name(i), "A", tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert clients.answer_strings(r, "A") == [servers.zone_a(i)]


def _listening_tcp_ports(pid):
    """Every TCP port process `pid` listens on, read from the kernel's
    socket tables by the inodes of its descriptors: proof that a listener
    exists or not without having to guess its port."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed since the listing
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN.
            if len(f) > 9 and f[3] == "0A" and f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _check_config(stubborn_bin, conf):
    p = subprocess.run([stubborn_bin, "check-config", "-c", str(conf)], capture_output=True,
                       text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.stdout, p.stderr)
    return p.stdout


def test_counters_after_a_known_sequence(upstream, stubborn, certs):
    rogue = upstream("rogue", "rogue")
    good = upstream("good", "good")
    pin = certs["good"].pin
    s, mport = _metrics_stubborn(stubborn, [rogue.spec(pins=[pin]), good.spec(pins=[pin])])

    # Before anything is asked every counter is zero, so what follows is
    # all the sequence's doing.
    m = _scrape(mport)
    _check_exposition(m, ["rogue", "good"])
    assert all(v == 0 for (name, _), v in m.samples.items()
               if name.endswith(("_total", "_count", "_sum", "_bucket"))), m.text

    _a(s.port, 1)           # miss; rogue refused at the gate, good answers
    _a(s.port, 2)           # miss
    _a(s.port, 3)           # miss
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(RUNT, ("127.0.0.1", s.port))
    # Datagrams on one socket are read in arrival order, so the answer to
    # this one proves the runt has been counted (it gets no reply).
    _a(s.port, 1)           # hit
    _a(s.port, 4, tcp=True)  # miss

    # The upstreams' own logs: what the metrics must agree with.
    assert rogue.queries_seen() == 0, rogue.queries()
    assert [q[1] for q in good.queries()] == [servers.zone_name(i) for i in (1, 2, 3, 4)]
    incidents = s.incidents()
    assert [(i["upstream"], i["reason"]) for i in incidents] == [("rogue", "pin")], incidents

    m = _scrape(mport)
    _check_exposition(m, ["rogue", "good"])
    assert m("stubborn_queries_total", protocol="udp") == 5
    assert m("stubborn_queries_total", protocol="tcp") == 1
    assert m("stubborn_malformed_total") == 1
    assert m("stubborn_refused_total") == 0
    assert m("stubborn_cache_hits_total") == 1
    assert m("stubborn_cache_misses_total") == 4
    assert m("stubborn_cache_entries") == 4
    for quiet in ("stubborn_coalesced_total", "stubborn_stale_answers_total",
                  "stubborn_servfail_total", "stubborn_shed_total"):
        assert m(quiet) == 0, quiet

    assert m("stubborn_upstream_queries_total", upstream="good") == 4
    assert m("stubborn_upstream_answers_total", upstream="good") == 4
    assert m("stubborn_upstream_errors_total", upstream="good") == 0
    # Sequential queries ride one connection, well within its idle timeout.
    assert m("stubborn_upstream_handshakes_total", upstream="good") == 1
    # "Sent" is what the rogue's log shows: nothing.  A query queued on a
    # connection the gate then refused never left stubborn, and an operator
    # reading a nonzero count here would believe a query leaked to it.
    assert m("stubborn_upstream_queries_total", upstream="rogue") == rogue.queries_seen()
    assert m("stubborn_upstream_answers_total", upstream="rogue") == 0
    assert m("stubborn_upstream_handshakes_total", upstream="rogue") == 0

    for u, reason in [(u, r) for u in ("rogue", "good") for r in REASONS]:
        want = 1 if (u, reason) == ("rogue", "pin") else 0
        assert m("stubborn_trust_incidents_total", upstream=u, reason=reason) == want, (u, reason)

    assert m("stubborn_upstream_state", upstream="rogue", state="quarantined") == 1
    assert m("stubborn_upstream_state", upstream="good", state="up") == 1

    for u in ("rogue", "good"):
        assert (m("stubborn_upstream_rtt_seconds_count", upstream=u)
                == m("stubborn_upstream_answers_total", upstream=u)), u
    # Four answers over loopback: well inside the last finite bucket.
    assert m("stubborn_upstream_rtt_seconds_bucket", upstream="good",
             le=str(RTT_LAST_BOUND)) == 4
    assert m("stubborn_ct_log_list_age_seconds") == -1


def test_healthz_ok_with_a_good_upstream(upstream, stubborn):
    good = upstream("good", "good")
    s, mport = _metrics_stubborn(stubborn, [good.spec()])
    status, headers, body = _get(mport, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert _ctype(headers).startswith("text/plain"), headers
    _a(s.port, 7)
    assert _get(mport, "/healthz")[0::2] == (200, "ok\n")


def test_healthz_503_once_the_only_upstream_is_quarantined(upstream, stubborn, certs):
    rogue = upstream("rogue", "rogue")
    s, mport = _metrics_stubborn(stubborn, [rogue.spec(pins=[certs["good"].pin])])

    q, r = clients.ask(s.port, servers.zone_name(1), "A")
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    assert [i["reason"] for i in s.incidents()] == ["pin"], s.incidents()

    status, _, body = _get(mport, "/healthz")
    assert status == 503, (status, body)
    m = _scrape(mport)
    assert m("stubborn_upstream_state", upstream="rogue", state="quarantined") == 1
    assert m("stubborn_servfail_total") == 1
    # Still 503 on a second look: the verdict is the state, not an event.
    assert _get(mport, "/healthz")[0] == 503


def test_healthz_503_while_no_upstream_is_up_and_200_again_without_a_query(
        upstream, stubborn):
    good = upstream("good", "good")
    good.stop()     # nothing listens on its port for now
    s, mport = _metrics_stubborn(stubborn, [good.spec()])
    # Not tried yet: nothing says it is down.
    assert _get(mport, "/healthz")[0] == 200

    q, r = clients.ask(s.port, servers.zone_name(1), "A")
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    status, _, body = _get(mport, "/healthz")
    assert (status, body) == (503, "no upstream up\n")
    assert _scrape(mport)("stubborn_upstream_state", upstream="good", state="down") == 1

    # Back: the health checks themselves reconnect once its backoff is over.
    good.start()
    assert slow.wait_until(lambda: _get(mport, "/healthz")[0] == 200, timeout=10.0), \
        s.log_text()
    assert good.queries_seen() == 0, good.queries()
    assert _scrape(mport)("stubborn_upstream_state", upstream="good", state="up") == 1
    _a(s.port, 2)


def test_a_backup_back_from_down_is_seen_up_though_no_query_needs_it(upstream, stubborn):
    # Both down, then both back.  The first is asked again by the queries;
    # the second, which no query needs while the first answers, is retried
    # all the same once its backoff is over, as the log said it would be,
    # and the log and the state gauge say it is up.
    first, second = upstream("first"), upstream("second")
    s, mport = _metrics_stubborn(stubborn, [first.spec(), second.spec()])
    first.stop()
    second.stop()
    q, r = clients.ask(s.port, servers.who_name("gone"), "TXT", timeout=5.0)
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    m = _scrape(mport)
    assert m("stubborn_upstream_state", upstream="second", state="down") == 1, s.log_text()
    # Retried once its 1 s backoff is over: refused again, and quietly,
    # "down" having been said.
    time.sleep(1.5)
    refusals = re.findall(r"(?m)^(\w+): upstream second: [^ ]+: Connection refused$",
                          s.log_text())
    assert refusals == ["warning"], s.log_text()
    first.start()
    second.start()
    # Queries only ever need the first, once it is back.
    assert slow.wait_until(lambda: clients.answer_strings(clients.ask(
        s.port, servers.who_name(f"back{time.monotonic()}"), "TXT", timeout=5.0)[1],
        "TXT") == ["first"], timeout=10.0, step=0.2), s.log_text()
    assert slow.wait_until(lambda: "upstream second: up" in s.log_text(),
                           timeout=10.0), s.log_text()
    m = _scrape(mport)
    assert m("stubborn_upstream_state", upstream="second", state="up") == 1, s.log_text()
    assert m("stubborn_upstream_state", upstream="first", state="up") == 1, s.log_text()
    assert second.queries_seen() == 0, second.queries()


class FailFirst:
    """A DoH server whose first `n` answers are HTTP 500, the rest right."""

    def __init__(self, n):
        self.left = n

    def on_request(self, conn, req):
        if self.left > 0:
            self.left -= 1
            conn.respond(req, b"", status=500)
        else:
            conn.answer(req)

    def on_idle(self, conn):
        pass


def test_healthz_200_again_once_a_down_upstream_answers_on_its_connection(
        hostile_h2, stubborn):
    # Three bad answers mark it down while its connection stays open; the
    # next good answer on that connection brings it, and the verdict, back.
    h = hostile_h2(FailFirst(3))
    s, mport = _metrics_stubborn(stubborn, [h.spec()])
    for i in range(3):
        q, r = clients.ask(s.port, servers.zone_name(i), "A")
        assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    assert _get(mport, "/healthz")[0] == 503
    # Once its 1 s backoff is over (before, the only upstream is not asked).
    time.sleep(1.2)
    q, r = clients.ask(s.port, servers.zone_name(3), "A")
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert _get(mport, "/healthz")[0] == 200
    m = _scrape(mport)
    name = h.spec().name
    assert m("stubborn_upstream_state", upstream=name, state="up") == 1
    # Each failed query counts once among the errors, however it failed.
    assert m("stubborn_upstream_queries_total", upstream=name) == 4
    assert m("stubborn_upstream_errors_total", upstream=name) == 3
    assert m("stubborn_upstream_answers_total", upstream=name) == 1
    assert h.connections == 1


def test_refused_client_is_counted(upstream, stubborn):
    good = upstream("good", "good")
    s, mport = _metrics_stubborn(stubborn, [good.spec()], allow="127.0.0.2/32")

    q, r = clients.ask(s.port, servers.zone_name(1), "A", source="127.0.0.1")
    assert r.rcode() == dns.rcode.REFUSED, clients.rcode_text(r)
    assert good.queries_seen() == 0, good.queries()

    m = _scrape(mport)
    assert m("stubborn_refused_total") == 1
    assert m("stubborn_queries_total", protocol="udp") == 1
    assert m("stubborn_queries_total", protocol="tcp") == 0
    # Refused before the cache is even asked.
    assert m("stubborn_cache_misses_total") == 0
    assert m("stubborn_cache_hits_total") == 0
    assert m("stubborn_malformed_total") == 0
    assert m("stubborn_upstream_queries_total", upstream="good") == 0


def test_other_paths_are_404(upstream, stubborn):
    good = upstream("good", "good")
    s, mport = _metrics_stubborn(stubborn, [good.spec()])
    for path in ("/", "/nope", "/metrics/x", "/healthzz"):
        status, _, body = _get(mport, path)
        assert status == 404, (path, status, body)
    # Still serving after the misses.
    assert _get(mport, "/metrics")[0] == 200


def test_metrics_listener_only_where_configured(upstream, stubborn, stubborn_bin):
    good = upstream("good", "good")
    on, mport = _metrics_stubborn(stubborn, [good.spec()])
    off = stubborn([good.spec()])

    # The positive case shows the socket-table reading finds a metrics
    # listener when there is one, which is what makes its absence mean
    # something in the default case.
    assert _listening_tcp_ports(on.proc.pid) == {on.port, mport}
    assert _listening_tcp_ports(off.proc.pid) == {off.port}

    assert re.search(rf"^metrics = 127\.0\.0\.1:{mport}$",
                     _check_config(stubborn_bin, on.conf), re.M)
    assert re.search(r"^metrics = $", _check_config(stubborn_bin, off.conf), re.M)


def test_questions_an_upstream_may_refuse_leave_it_up(upstream, stubborn):
    """A REFUSED to a question outside class IN, and a zone transfer, are
    about the question, not the upstream: the client gets REFUSED, the
    upstream stays up and /healthz stays 200.  Zone transfers are refused
    here, nothing asked upstream."""
    good = upstream("good", "good")
    s, mport = _metrics_stubborn(stubborn, [good.spec()])
    for rdclass in ("CH", "HS", "CH", "CH"):
        q = dns.message.make_query(servers.zone_name(3), "A", rdclass=rdclass)
        r = dns.query.udp(q, "127.0.0.1", port=s.port, timeout=clients.CLIENT_TIMEOUT)
        assert r.id == q.id and r.question == q.question
        assert r.rcode() == dns.rcode.REFUSED, clients.rcode_text(r)
    # The upstream's answers, passed on (unbound logs no query of these).
    assert _scrape(mport)("stubborn_upstream_answers_total", upstream="good") == 4
    seen = good.queries_seen()
    for rdtype in ("AXFR", "IXFR", "AXFR", "AXFR"):
        for ask in (dns.query.udp, dns.query.tcp):
            q = dns.message.make_query("zone.test", rdtype, use_edns=0)
            r = ask(q, "127.0.0.1", port=s.port, timeout=clients.CLIENT_TIMEOUT)
            assert r.id == q.id and r.question == q.question
            assert r.rcode() == dns.rcode.REFUSED, clients.rcode_text(r)
            assert r.edns == 0, "the answer to an EDNS query lost its OPT"
    assert good.queries_seen() == seen, good.queries()
    assert _get(mport, "/healthz")[0::2] == (200, "ok\n")
    m = _scrape(mport)
    assert m("stubborn_upstream_state", upstream="good", state="up") == 1
    assert "upstream good: down" not in s.log_text()
    _a(s.port, 8)
