"""DNS over HTTPS upstreams: forwarding through real DoH servers (unbound,
dnsdist, knot-resolver) over one HTTP/2 connection, the trust gate before
any HTTP/2 byte, no downgrade from h2, and a scripted HTTP/2 server whose
per-stream lies (status, content-type, size, resets, GOAWAY, hang-ups) cost
a query at most a failover, never the connection's other streams or
stubborn itself."""

import re
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.query
import dns.rcode
import pytest

import clients
import hostile
import pki
import servers
import slow
from servers import zone_a, zone_aaaa, zone_name, zone_txt

# Per the contract: a failed stream fails over at once, a silent upstream
# costs at most the 1.5 s attempt, SERVFAIL comes within 4 s.
ANSWER_WITHIN = 4.0
# Long enough for a failover, short enough to end a stuck test quickly.
SLOW_CLIENT = 6.0

# The hostile server's own answers (hostile.DEFAULT_DATA): a who.zone.test
# TXT answered "hostile" came from it, anything else from a real upstream.
HOSTILE_TXT = ["hostile"]


# HTTP/2 error codes (RFC 9113 section 7).
H2_NO_ERROR = 0x0
H2_INTERNAL_ERROR = 0x2
H2_REFUSED_STREAM = 0x7
H2_CANCEL = 0x8


class Script:
    """What the scripted DoH server (hostile_h2) calls: on_request for each
    complete request, on_idle when the line is quiet.  Both run in the
    connection's thread; per-connection state lives on conn.state.  This
    one answers everything correctly."""

    def on_request(self, conn, req):
        conn.answer(req)

    def on_idle(self, conn):
        pass


def _ok(port, name, rdtype="A", tcp=False, timeout=clients.CLIENT_TIMEOUT):
    q, r = clients.ask(port, name, rdtype, tcp=tcp, timeout=timeout)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, (name, clients.rcode_text(r))
    return clients.answer_strings(r, rdtype)


def _who(port, tag, tcp=False):
    """Which upstream answered a fresh name, and how long it took."""
    t0 = time.monotonic()
    answers = _ok(port, servers.who_name(tag), "TXT", tcp=tcp, timeout=SLOW_CLIENT)
    return answers, time.monotonic() - t0


def _connected_lines(stubborn_proc, name):
    """stubborn -v's line for each connection to upstream `name` that
    passed the gate."""
    pat = re.compile(rf"\bupstream {re.escape(name)}: \S+: connected\b")
    return [line for line in stubborn_proc.log_text().splitlines() if pat.search(line)]



# --------------------------------------------------------------- forwarding

@pytest.fixture
def doh_resolver(upstream, stubborn, certs):
    first = upstream("first", transports=("doh",))
    s = stubborn([first.spec(pins=[certs["good"].pin])], verbose=True)
    s.upstreams = [first]
    return s


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_doh_dnspython_answers_match_zone(doh_resolver, tcp):
    first = doh_resolver.upstreams[0]
    for rdtype, expected in [("A", zone_a(7)), ("AAAA", zone_aaaa(7)), ("TXT", zone_txt(7))]:
        assert _ok(doh_resolver.port, zone_name(7), rdtype, tcp=tcp) == [expected]
    q, r = clients.ask(doh_resolver.port, "missing.zone.test", "A", tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NXDOMAIN, clients.rcode_text(r)
    # The edges of the ID space: DoH puts 0 on the wire, and the client's
    # own ID, whatever it is, must come back.
    for i, qid in enumerate([0, 1, 0xBEEF, 0xFFFF]):
        q = dns.message.make_query(zone_name(20 + i), "A")
        q.id = qid
        r = (dns.query.tcp if tcp else dns.query.udp)(
            q, "127.0.0.1", port=doh_resolver.port, timeout=clients.CLIENT_TIMEOUT)
        assert r.id == qid
        assert clients.answer_strings(r, "A") == [zone_a(20 + i)]
    asked = {(n, t) for _, n, t in first.queries()}
    assert (zone_name(7), "TXT") in asked and (zone_name(23), "A") in asked, asked
    assert len(_connected_lines(doh_resolver, "first")) == 1


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_doh_kdig(doh_resolver, kdig_bin, tcp):
    a = clients.kdig(kdig_bin, doh_resolver.port, zone_name(42), "A", tcp=tcp)
    assert a.status == "NOERROR", a.output
    assert a.answers == [zone_a(42)], a.output
    a = clients.kdig(kdig_bin, doh_resolver.port, zone_name(43), "TXT", tcp=tcp)
    assert a.answers == [zone_txt(43)], a.output
    a = clients.kdig(kdig_bin, doh_resolver.port, servers.who_name("kdig"), "TXT", tcp=tcp)
    assert a.answers == ["first"], a.output


def _burst_questions(n, marker):
    """n distinct names, each with the answer the zone gives it."""
    out = []
    for i in range(n):
        if i < servers.ZONE_NAMES:
            out.append((zone_name(i), "A", [zone_a(i)]))
        else:
            out.append((servers.who_name(f"burst{i}"), "TXT", [marker]))
    return out


def _udp_burst(port, questions, sockets=25, timeout=10.0):
    """Send every question at once (spread over a few sockets so that no
    receive buffer overflows), then collect the replies.  Returns
    {index: response} for those answered in time."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    sel = selectors.DefaultSelector()
    pending = {}            # (socket number, message ID) -> question index
    got = {}
    try:
        for k, s in enumerate(socks):
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            sel.register(s, selectors.EVENT_READ, k)
        for i, (name, rdtype, _) in enumerate(questions):
            q = dns.message.make_query(name, rdtype)
            q.id = 1 + i
            k = i % sockets
            pending[(k, q.id)] = i
            socks[k].sendto(q.to_wire(), ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                for _ in range(64):
                    try:
                        wire = key.fileobj.recv(65535)
                    except BlockingIOError:
                        break
                    r = dns.message.from_wire(wire)
                    i = pending.pop((key.data, r.id), None)
                    if i is not None:
                        got[i] = r
    finally:
        sel.close()
        for s in socks:
            s.close()
    return got


def _assert_all_answered(questions, got):
    """Every question of a burst answered, each rightly."""
    missing = [questions[i][0] for i in range(len(questions)) if i not in got]
    assert not missing, f"{len(missing)} unanswered, e.g. {missing[:5]}"
    wrong = []
    for i, r in got.items():
        name, rdtype, expected = questions[i]
        if (r.rcode() != dns.rcode.NOERROR or r.question[0].name.to_text() != name
                or clients.answer_strings(r, rdtype) != expected):
            wrong.append((name, clients.rcode_text(r), clients.answer_strings(r, rdtype)))
    assert not wrong, f"{len(wrong)} wrong, e.g. {wrong[:5]}"


def test_500_concurrent_queries_over_one_connection(upstream, stubborn, certs):
    first = upstream("first", transports=("doh",))
    s = stubborn([first.spec(pins=[certs["good"].pin])], verbose=True)
    questions = _burst_questions(500, "first")
    # Cold: the burst meets no connection, so all 500 wait for the one
    # being opened instead of each opening its own.
    _assert_all_answered(questions, _udp_burst(s.port, questions))
    # Each name reached unbound once: no retry, no second connection's
    # duplicate.
    asked = [n for _, n, _ in first.queries()]
    assert sorted(asked) == sorted(q[0] for q in questions)
    # One connection: stubborn opened one, and one is established now.
    assert len(_connected_lines(s, "first")) == 1, _connected_lines(s, "first")
    assert servers.tcp_connections(first.address, first.port) == 1


def test_dnsdist_as_doh_upstream(upstream, dnsdist, stubborn, certs, kdig_bin):
    backend = upstream("backend", transports=("plain",))
    d = dnsdist("dnsdist", backend)
    # No path in the url: stubborn's default must be /dns-query, the only
    # path dnsdist serves.
    s = stubborn([d.spec(pins=[certs["good"].pin], path="")], verbose=True)
    # A name per transport: stubborn's cache would answer a repeat.
    for tcp in (False, True):
        i = 11 + tcp
        for rdtype, expected in [("A", zone_a(i)), ("AAAA", zone_aaaa(i)),
                                 ("TXT", zone_txt(i))]:
            assert _ok(s.port, zone_name(i), rdtype, tcp=tcp) == [expected]
        assert _who(s.port, f"dd{int(tcp)}", tcp=tcp)[0] == ["backend"]
    a = clients.kdig(kdig_bin, s.port, zone_name(13), "AAAA")
    assert a.status == "NOERROR" and a.answers == [zone_aaaa(13)], a.output

    seen = [q for q in d.queries() if q[1] != servers.Dnsdist.CHECK_NAME]
    asked = {(q[1], q[2]) for q in seen}
    for i in (11, 12):
        assert {(zone_name(i), t) for t in ("A", "AAAA", "TXT")} <= asked, seen
    assert {(zone_name(13), "AAAA"), (servers.who_name("dd0"), "TXT"),
            (servers.who_name("dd1"), "TXT")} <= asked, seen
    # RFC 8484: message ID 0 on the wire, whatever the client chose.
    assert {q[3] for q in seen} == {0}, seen
    # dnsdist names each query's client address and port: one connection.
    assert len({q[0] for q in seen}) == 1, seen
    # The answers came through dnsdist: the backend saw these names from
    # dnsdist's own address, and nobody else asked it.
    via = [(c, n) for c, n, _ in backend.queries() if n != servers.Dnsdist.CHECK_NAME]
    assert via and {c for c, _ in via} == {d.address}, via
    assert zone_name(11) in {n for _, n in via}


def test_knot_resolver_as_doh_upstream_takes_a_cold_burst(upstream, kresd, stubborn,
                                                         certs):
    """knot-resolver is the strictest DoH server here: it refuses a stream
    whose HEADERS come before the last one's DATA, loses a DATA frame cut
    across two TLS records, and stops reading past 100 queries in flight.
    A burst on a cold connection meets all three."""
    backend = upstream("backend", transports=("plain",))
    k = kresd("kresd", backend)
    s = stubborn([k.spec(pins=[certs["good"].pin])], verbose=True)
    questions = _burst_questions(500, "backend")
    _assert_all_answered(questions, _udp_burst(s.port, questions, timeout=20.0))
    # No stream refused or spoiled on the way, and one connection did it.
    bad = [line for line in s.log_text().splitlines() if "kresd: stream" in line]
    assert not bad, bad[:5]
    assert len(_connected_lines(s, "kresd")) == 1, _connected_lines(s, "kresd")


# --------------------------------------------------------------- trust gate

def _incident(s, name):
    mine = [i for i in s.incidents() if i.get("upstream") == name]
    assert mine, f"no trust-incident line for {name}: {s.incidents()}"
    return mine[0]


BAD_CERTS = [
    pytest.param("rogue", True, "pin", id="rogue-key-pinned"),
    pytest.param("wrongname", False, "hostname", id="wrong-host"),
    pytest.param("untrusted", False, "chain", id="untrusted-ca"),
]


@pytest.mark.parametrize("bad_cert,pinned,reason", BAD_CERTS)
def test_doh_bad_certificate_is_refused(upstream, stubborn, certs, bad_cert, pinned, reason):
    bad = upstream("first", bad_cert, transports=("doh",))
    good = upstream("second", transports=("doh",))
    pins = [certs["good"].pin] if pinned else []
    s = stubborn([bad.spec(pins=pins), good.spec(pins=pins)], verbose=True)
    for i, tcp in enumerate((False, True, False)):
        answers, elapsed = _who(s.port, f"bad{i}", tcp=tcp)
        assert answers == ["second"]
        assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"
    assert bad.queries_seen() == 0, bad.queries()
    inc = _incident(s, "first")
    assert inc["reason"] == reason, inc
    assert inc["address"] == f"{bad.address}:{bad.port}", inc
    assert inc["spki_pin"] == certs[bad_cert].pin, inc
    # Quarantined: one handshake, one incident, however many queries.
    assert len([i for i in s.incidents() if i.get("upstream") == "first"]) == 1
    assert _connected_lines(s, "first") == []


@pytest.mark.parametrize("bad_cert,pinned,reason", BAD_CERTS)
def test_refused_doh_server_gets_no_http2_byte(hostile_h2, upstream, stubborn, certs,
                                                bad_cert, pinned, reason):
    # The scripted server counts every byte after the handshake: stubborn
    # must decide before the HTTP/2 preface, let alone a HEADERS frame.
    h = hostile_h2(Script(), name="first", cert=bad_cert)
    good = upstream("second", transports=("doh",))
    pins = [certs["good"].pin] if pinned else []
    s = stubborn([h.spec(pins=pins), good.spec(pins=pins)], verbose=True)
    answers, elapsed = _who(s.port, "refused")
    assert answers == ["second"] and elapsed < ANSWER_WITHIN, (answers, elapsed)
    assert _incident(s, "first")["reason"] == reason
    assert h.connections >= 1, "stubborn never tried the refused server"
    assert slow.wait_until(h.all_closed, 3.0), h.log_text()
    assert h.requests() == []
    assert sum(h.bytes_in.values()) == 0, h.bytes_in


def test_server_refusing_h2_gets_no_request(hostile_h2, upstream, stubborn):
    h1 = hostile_h2(Script(), name="http1", alpn=("http/1.1",))
    second = upstream("second", transports=("doh",))
    s = stubborn([h1.spec(), second.spec()], verbose=True)
    for i, tcp in enumerate((False, True)):
        answers, elapsed = _who(s.port, f"noh2-{i}", tcp=tcp)
        assert answers == ["second"]
        assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"
    assert h1.handshakes >= 1, "stubborn never completed a handshake with it"
    assert set(h1.negotiated) == {None}, h1.negotiated
    # Hung up without a byte: no HTTP/1.1 request, no HTTP/2 preface.
    assert slow.wait_until(h1.all_closed, 3.0), h1.log_text()
    assert sum(h1.bytes_in.values()) == 0, h1.bytes_in
    assert re.search(r"upstream http1: .*HTTP/2", s.log_text()), \
        "stubborn did not say the server refused HTTP/2"
    # Not a certificate problem: no incident, no quarantine.
    assert s.incidents() == []


def test_server_refusing_h2_backs_off_like_a_failed_connection(hostile_h2, upstream,
                                                                stubborn):
    # Refusing HTTP/2 is a connection failure: each one must lengthen the
    # wait before the next try (1 s, 2 s, ...), as for a server that is
    # down, rather than count as a good connection that resets it.
    h1 = hostile_h2(Script(), name="http1", alpn=("http/1.1",))
    second = upstream("second", transports=("doh",))
    s = stubborn([h1.spec(), second.spec()], verbose=True)
    t0 = time.monotonic()
    for i in range(40):
        assert _who(s.port, f"backoff{i}")[0] == ["second"]
        if time.monotonic() - t0 > 4.5:
            break
        time.sleep(0.2)
    times = list(h1.handshake_times)
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
    assert len(gaps) >= 2, f"handshakes at {times}: too few to judge"
    assert gaps[1] >= 1.5, f"backoff did not grow: seconds between handshakes {gaps}"


# --------------------------------------------------- request on the wire

@pytest.mark.parametrize("path,expected_path", [("/custom/dns-query", "/custom/dns-query"),
                                                ("", "/dns-query")],
                         ids=["custom-path", "default-path"])
def test_request_is_an_rfc8484_post(hostile_h2, stubborn, path, expected_path):
    h = hostile_h2(Script())
    s = stubborn([h.spec(path=path)], verbose=True)
    for qid, tcp in [(0x1234, False), (0xBEEF, True), (0, False)]:
        q = dns.message.make_query(f"shape{qid}.example.test", "AAAA")
        q.id = qid
        r = (dns.query.tcp if tcp else dns.query.udp)(
            q, "127.0.0.1", port=s.port, timeout=clients.CLIENT_TIMEOUT)
        assert r.id == qid
        assert clients.answer_strings(r, "AAAA") == [hostile.DEFAULT_DATA["AAAA"]]
    reqs = h.requests()
    assert len(reqs) == 3, reqs
    for req in reqs:
        assert req.header(":method") == "POST"
        assert req.header(":scheme") == "https"
        assert req.header(":authority") == f"{pki.HOSTNAME}:{h.port}"
        assert req.header(":path") == expected_path
        assert req.header("content-type") == "application/dns-message"
        assert req.header("accept") == "application/dns-message"
        assert req.header("content-length") in (None, str(len(req.body)))
        assert req.query is not None and req.query.id == 0, req
    assert [r.qname for r in reqs] == [f"shape{i}.example.test." for i in (0x1234, 0xBEEF, 0)]
    # One connection, one new stream per query.
    assert {r.conn for r in reqs} == {1} and h.connections == 1
    assert len({r.stream_id for r in reqs}) == 3


class HoldBatch(Script):
    """Hold requests until `n` are open (or the line goes quiet), then
    answer them all, each with its own data."""

    QUIET = 0.3

    def __init__(self, n, data):
        self.n = n
        self.data = data
        self.batches = []

    def on_request(self, conn, req):
        conn.state.setdefault("pending", []).append(req)
        conn.state["last"] = time.monotonic()
        if len(conn.state["pending"]) >= self.n:
            self._flush(conn)

    def on_idle(self, conn):
        if conn.state.get("pending") and time.monotonic() - conn.state["last"] > self.QUIET:
            self._flush(conn)

    def _flush(self, conn):
        pending = conn.state.pop("pending")
        self.batches.append(len(pending))
        for req in pending:
            conn.answer(req, self.data.get(req.qname, "192.0.2.99"))


def test_streams_beyond_the_servers_limit_wait_their_turn(hostile_h2, stubborn):
    n, limit = 20, 5
    names = [f"m{i}.example.test." for i in range(n)]
    data = {name: f"198.51.100.{i + 1}" for i, name in enumerate(names)}
    script = HoldBatch(limit, data)
    h = hostile_h2(script, max_streams=limit)
    s = stubborn([h.spec()], verbose=True)
    # Warm: stubborn has the server's SETTINGS before the burst, as it
    # would after any first query.
    assert _ok(s.port, "warm.example.test") == ["192.0.2.99"]
    start = threading.Barrier(n)

    def one(i):
        q = clients.make_query(names[i], "A")
        start.wait(timeout=10)
        send = dns.query.tcp if i % 2 else dns.query.udp
        return i, q, send(q, "127.0.0.1", port=s.port, timeout=clients.CLIENT_TIMEOUT)

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    for i, q, r in results:
        assert r.id == q.id
        assert r.rcode() == dns.rcode.NOERROR, (names[i], clients.rcode_text(r))
        assert clients.answer_strings(r, "A") == [data[names[i]]], names[i]
    assert h.errors == [], "stubborn opened more streams than the server allows"
    assert h.max_open == limit, f"at most {h.max_open} streams were in flight at once"
    assert sum(script.batches) == n + 1, script.batches
    assert h.connections == 1


# ------------------------------------------------------- per-stream lies

def _other_name(name):
    return ("x" if name[0] != "x" else "y") + name[1:]


def _act(kind):
    """What the hostile server does to a request it is told to spoil."""
    def status_500(conn, req):
        conn.respond(req, hostile.correct(req.query), status=500)

    def status_not_digits(conn, req):
        # Digits by arithmetic ('1', ':' and '0' would add up to 200):
        # only three real digits make a status.
        conn.respond(req, hostile.correct(req.query), status="1:0")

    def status_2000(conn, req):
        conn.respond(req, hostile.correct(req.query), status="2000")

    def text_plain(conn, req):
        # A perfectly good DNS answer: only the type is wrong.
        conn.respond(req, hostile.correct(req.query), content_type="text/plain")

    def no_content_type(conn, req):
        conn.respond(req, hostile.correct(req.query), content_type=None)

    def oversize(conn, req):
        # A good answer padded past the largest DNS message, the stream left
        # open: stubborn must stop reading and reset it, not wait for more.
        conn.respond(req, hostile.correct(req.query).ljust(70000, b"\0"), end_stream=False)

    def rst_stream(conn, req):
        conn.reset(req, H2_INTERNAL_ERROR)

    def rst_refused(conn, req):
        conn.reset(req, H2_REFUSED_STREAM)

    def wrong_question(conn, req):
        q = req.query
        conn.respond(req, hostile.reply(q, '"decoy"', name=_other_name(q.question[0].name.to_text())))

    def short_body(conn, req):
        conn.respond(req, hostile.correct(req.query)[:7])

    def trailer_status(conn, req):
        # A 500 with a good body, then trailers claiming 200: trailers
        # carry no pseudo-header (RFC 9113 8.1), so the 500 stands.
        conn.respond(req, hostile.correct(req.query), status=500, end_stream=False)
        conn.h2.send_headers(req.stream_id, [(":status", "200")], end_stream=True)
        conn.open_streams.discard(req.stream_id)
        conn.flush()

    def two_statuses(conn, req):
        body = hostile.correct(req.query)
        conn.h2.send_headers(req.stream_id, [(":status", "500"), (":status", "200"),
                                             ("content-type", "application/dns-message"),
                                             ("content-length", str(len(body)))])
        conn.h2.send_data(req.stream_id, body, end_stream=True)
        conn.open_streams.discard(req.stream_id)
        conn.flush()

    def body_after_103(conn, req):
        # The body comes after an informational response, before the final
        # one: no body of a response with status 200.
        body = hostile.correct(req.query)
        conn.h2.send_headers(req.stream_id, [(":status", "103")])
        conn.h2.send_data(req.stream_id, body)
        conn.h2.send_headers(req.stream_id, [(":status", "200"),
                                             ("content-type", "application/dns-message")],
                             end_stream=True)
        conn.open_streams.discard(req.stream_id)
        conn.flush()

    def type_in_trailers(conn, req):
        # The final response's type is wrong; trailers saying otherwise
        # are not the response's headers.
        conn.respond(req, hostile.correct(req.query), content_type="text/html",
                     end_stream=False)
        conn.h2.send_headers(req.stream_id, [("content-type", "application/dns-message")],
                             end_stream=True)
        conn.open_streams.discard(req.stream_id)
        conn.flush()

    def rst_no_error(conn, req):
        # The whole answer, but no END_STREAM: RST_STREAM(NO_ERROR) ends
        # only a complete response (RFC 9113 8.1).
        conn.respond(req, hostile.correct(req.query), end_stream=False)
        conn.reset(req, H2_NO_ERROR)

    return {
        "status-500": status_500, "text-plain": text_plain,
        "no-content-type": no_content_type, "oversize-body": oversize,
        "rst-stream": rst_stream, "rst-refused": rst_refused,
        "status-not-digits": status_not_digits, "status-2000": status_2000,
        "wrong-question": wrong_question, "short-body": short_body,
        "trailer-status": trailer_status, "two-statuses": two_statuses,
        "body-after-103": body_after_103, "type-in-trailers": type_in_trailers,
        "rst-no-error": rst_no_error,
    }[kind]


class Spoil(Script):
    """Spoil the answer to every name starting with "bad", answer the rest:
    by name, so retries and failovers do not shift what happens to whom."""

    def __init__(self, act):
        self.act = act

    def on_request(self, conn, req):
        if req.qname.startswith("bad"):
            self.act(conn, req)
        else:
            conn.answer(req)


STREAM_LIES = ["status-500", "status-not-digits", "status-2000", "text-plain", "no-content-type", "oversize-body",
               "rst-stream", "rst-refused", "wrong-question", "short-body",
               "trailer-status", "two-statuses", "body-after-103", "type-in-trailers",
               "rst-no-error"]


@pytest.mark.parametrize("kind", STREAM_LIES)
def test_spoiled_stream_fails_over_and_the_connection_survives(hostile_h2, upstream,
                                                                stubborn, kind):
    h = hostile_h2(Spoil(_act(kind)))
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    for i, tcp in enumerate((False, True)):
        answers, elapsed = _who(s.port, f"bad{i}-{kind}", tcp=tcp)
        assert answers == ["second"], f"stubborn took the spoiled answer: {answers}"
        assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"
    # A fresh stream on the same connection is answered: one stream's lie
    # did not take the others down.
    answers, _ = _who(s.port, f"good-{kind}")
    assert answers == HOSTILE_TXT
    reqs = h.requests()
    assert {r.conn for r in reqs} == {1} and h.connections == 1, h.log_text()
    assert reqs[-1].qname == servers.who_name(f"good-{kind}")
    if kind == "oversize-body":
        first_bad = next(r for r in reqs if r.qname.startswith("bad0"))
        resets = slow.wait_until(lambda: [x for x in h.resets() if x[1] == first_bad.stream_id], 2.0)
        assert resets, f"stubborn did not reset the oversized stream: {h.resets()}"
        _, _, code, at = resets[0]
        assert code == H2_CANCEL, resets
        # Reset for its size, not cancelled by the 1.5 s attempt timeout.
        assert at - first_bad.at < 1.0, f"reset {at - first_bad.at:.2f}s after the request"
    assert s.alive()



class Informational(Script):
    """A 103 before the final 200, and trailers after the body: both
    allowed (RFC 9113 8.1), neither the response's status or type."""

    def on_request(self, conn, req):
        body = hostile.correct(req.query)
        conn.h2.send_headers(req.stream_id, [(":status", "103"), ("link", "</x>")])
        conn.h2.send_headers(req.stream_id, [(":status", "200"),
                                             ("content-type", "application/dns-message"),
                                             ("content-length", str(len(body)))])
        conn.h2.send_data(req.stream_id, body)
        conn.h2.send_headers(req.stream_id, [("x-trailer", "1")], end_stream=True)
        conn.open_streams.discard(req.stream_id)
        conn.flush()


def test_informational_response_and_trailers_are_taken(hostile_h2, upstream, stubborn):
    h = hostile_h2(Informational())
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()])
    for i, tcp in enumerate((False, True)):
        answers, _ = _who(s.port, f"info{i}", tcp=tcp)
        assert answers == HOSTILE_TXT
    assert second.queries_seen() == 0, second.queries()
    assert s.alive()


def test_upstream_whose_answers_keep_failing_is_marked_down(hostile_h2, upstream, stubborn):
    # Three unusable answers in a row, like three timeouts: the upstream is
    # marked down (and says why), so the next queries go straight to the
    # next upstream instead of taking a detour each.
    h = hostile_h2(Spoil(_act("status-500")))
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    for i in range(3):
        answers, _ = _who(s.port, f"bad{i}-down")
        assert answers == ["second"]
    assert re.search(r"upstream hostile: down \(answers fail: HTTP status other than 200\)",
                     s.log_text()), s.log_text()
    before = len(h.requests())
    answers, _ = _who(s.port, "good-after-down")
    assert answers == ["second"]
    assert len(h.requests()) == before, "a down upstream was asked first"

class Goaway(Script):
    """On connections listed in `on` (all when None): GOAWAY whose
    last_stream_id is below the request's stream, then hang up."""

    def __init__(self, on=None):
        self.on = on

    def on_request(self, conn, req):
        if self.on is None or conn.index in self.on:
            conn.goaway(req.stream_id - 2 if req.stream_id > 2 else 0)
            conn.close()
        else:
            conn.answer(req)


def test_goaway_refused_stream_is_retried_on_a_new_connection(hostile_h2, upstream, stubborn):
    h = hostile_h2(Goaway(on={1}))
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    answers, elapsed = _who(s.port, "goaway-once")
    assert answers == HOSTILE_TXT, "the refused stream was not retried on the same server"
    assert elapsed < ANSWER_WITHIN
    name = servers.who_name("goaway-once")
    assert [(r.conn, r.qname) for r in h.requests()] == [(1, name), (2, name)]
    assert second.queries_seen() == 0
    assert s.alive()


def test_goaway_every_time_fails_over_to_the_next_upstream(hostile_h2, upstream, stubborn):
    h = hostile_h2(Goaway())
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    for i, tcp in enumerate((False, True)):
        answers, elapsed = _who(s.port, f"goaway{i}", tcp=tcp)
        assert answers == ["second"]
        assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"
    name = servers.who_name("goaway0")
    conns = {r.conn for r in h.requests() if r.qname == name}
    assert len(conns) >= 2, f"refused stream not retried on a new connection: {conns}"
    assert s.alive()


def test_goaway_before_any_answer_marks_the_upstream_down(hostile_h2, upstream, stubborn):
    # A server that sends every connection away before answering on it
    # takes no queries at all: after three such connections it is down,
    # and queries stop costing a detour through it.
    h = hostile_h2(Goaway())
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    for i in range(6):
        answers, elapsed = _who(s.port, f"goaway-down{i}", tcp=bool(i % 2))
        assert answers == ["second"]
    assert re.search(r"upstream hostile: down \(", s.log_text()), s.log_text()
    assert h.connections <= 4, h.log_text()
    assert s.alive()


class Drain(Script):
    """Connection 1 takes two requests, sends GOAWAY naming the lower
    stream as the last it will process, answers that one, hangs up.  Later
    connections answer at once."""

    QUIET = 1.0

    def __init__(self, data):
        self.data = data
        self.kept = None

    def on_request(self, conn, req):
        if conn.index != 1:
            conn.answer(req, self.data[req.qname])
            return
        conn.state.setdefault("pending", []).append(req)
        conn.state["last"] = time.monotonic()
        if len(conn.state["pending"]) == 2:
            self._drain(conn)

    def on_idle(self, conn):
        if conn.state.get("pending") and time.monotonic() - conn.state["last"] > self.QUIET:
            self._drain(conn)

    def _drain(self, conn):
        pending = sorted(conn.state.pop("pending"), key=lambda r: r.stream_id)
        keep = pending[0]
        self.kept = keep.qname
        conn.goaway(keep.stream_id)
        conn.answer(keep, self.data[keep.qname])
        conn.close()


def test_goaway_drains_streams_up_to_the_last_one(hostile_h2, upstream, stubborn):
    names = ["drain-a.example.test.", "drain-b.example.test."]
    data = {names[0]: "198.51.100.1", names[1]: "198.51.100.2"}
    script = Drain(data)
    h = hostile_h2(script)
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    start = threading.Barrier(2)

    def one(i):
        q = clients.make_query(names[i], "A")
        start.wait(timeout=10)
        t0 = time.monotonic()
        r = dns.query.udp(q, "127.0.0.1", port=s.port, timeout=SLOW_CLIENT)
        return q, r, time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(2)))
    for (q, r, elapsed), name in zip(results, names):
        assert r.id == q.id
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "A") == [data[name]], name
        assert elapsed < ANSWER_WITHIN, f"{name} took {elapsed:.2f}s"
    reqs = h.requests()
    on1 = sorted(r.qname for r in reqs if r.conn == 1)
    assert on1 == sorted(names), f"both were not in flight on connection 1: {reqs}"
    # The stream the GOAWAY kept was finished where it was; the other was
    # asked again, on a new connection.
    assert script.kept is not None
    refused = next(n for n in names if n != script.kept)
    assert [r.conn for r in reqs if r.qname == script.kept] == [1]
    assert [r.conn for r in reqs if r.qname == refused][-1] >= 2, reqs
    assert s.alive()


class HangUp(Script):
    """Read the request, then close the TCP connection; from connection
    `after` on, answer properly."""

    def __init__(self, after=None):
        self.after = after

    def on_request(self, conn, req):
        if self.after is not None and conn.index >= self.after:
            conn.answer(req)
        else:
            conn.close()


def test_hangup_mid_stream_is_retried_then_fails_over(hostile_h2, upstream, stubborn):
    h = hostile_h2(HangUp())
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    for i, tcp in enumerate((False, True)):
        answers, elapsed = _who(s.port, f"hangup{i}", tcp=tcp)
        assert answers == ["second"]
        assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"
    # Same upstream once more, on a new connection, then the next one.
    name = servers.who_name("hangup0")
    assert [r.conn for r in h.requests() if r.qname == name] == [1, 2], h.log_text()
    assert s.alive()


def test_hangup_once_is_answered_on_a_new_connection(hostile_h2, upstream, stubborn):
    h = hostile_h2(HangUp(after=2))
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    answers, elapsed = _who(s.port, "hangup-once")
    assert answers == HOSTILE_TXT and elapsed < ANSWER_WITHIN, (answers, elapsed)
    assert [r.conn for r in h.requests()] == [1, 2]
    assert second.queries_seen() == 0
    assert s.alive()


class Silent(Script):
    """Read every request, answer none."""

    def on_request(self, conn, req):
        pass


def test_silent_stream_is_cancelled_and_failed_over(hostile_h2, upstream, stubborn):
    h = hostile_h2(Silent())
    second = upstream("second", transports=("doh",))
    s = stubborn([h.spec(), second.spec()], verbose=True)
    answers, elapsed = _who(s.port, "silent")
    assert answers == ["second"]
    assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"
    # The abandoned stream is reset, not left open on the server.
    [req] = h.requests()
    resets = slow.wait_until(lambda: [x for x in h.resets() if x[:2] == (1, req.stream_id)], 2.0)
    assert resets and resets[0][2] == H2_CANCEL, h.resets()
    assert s.alive()


def test_silent_doh_upstream_alone_gives_prompt_servfail(hostile_h2, stubborn):
    h = hostile_h2(Silent())
    s = stubborn([h.spec()], verbose=True)
    for i, tcp in enumerate((False, True)):
        t0 = time.monotonic()
        q, r = clients.ask(s.port, servers.who_name(f"nobody{i}"), "TXT", tcp=tcp,
                           timeout=SLOW_CLIENT)
        elapsed = time.monotonic() - t0
        assert r.id == q.id
        assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
        assert elapsed < ANSWER_WITHIN, f"SERVFAIL took {elapsed:.2f}s"
    assert s.alive()


def test_idle_connection_is_pinged_and_kept(hostile_h2, stubborn):
    h = hostile_h2(Script())
    s = stubborn([h.spec()], verbose=True)
    assert _who(s.port, "before-ping")[0] == HOSTILE_TXT
    # Idle connections are pinged every 10 s; the server acknowledges.
    assert slow.wait_until(lambda: h.pings, 13.0, step=0.2), "no PING within 13 s of idling"
    assert _who(s.port, "after-ping")[0] == HOSTILE_TXT
    assert h.connections == 1
    assert {r.conn for r in h.requests()} == {1}


def test_idle_connection_is_closed_after_30_s(hostile_h2, stubborn):
    h = hostile_h2(Script())
    s = stubborn([h.spec()], verbose=True)
    assert _who(s.port, "last")[0] == HOSTILE_TXT
    t0 = time.monotonic()
    closed = re.compile(r"closing idle connection")
    assert slow.wait_until(lambda: closed.search(s.log_text()), 36.0, step=0.2), \
        "still open 36 s after the last answer"
    elapsed = time.monotonic() - t0
    # Pinged at 10 and 20 s, closed at 30 (the README's contract).
    assert 27.0 < elapsed < 34.0, f"closed after {elapsed:.1f}s"
    assert h.pings >= 2


# ------------------------------------------------------------ mixed pool

def test_mixed_pool_falls_back_to_dot_and_returns_to_doh(upstream, stubborn):
    doh = upstream("doh", transports=("doh",))
    dot = upstream("dot")
    s = stubborn([doh.spec(), dot.spec()], verbose=True)
    for i, tcp in enumerate((False, True)):
        assert _who(s.port, f"before{i}", tcp=tcp)[0] == ["doh"]
    assert dot.queries_seen() == 0

    doh.kill()
    # Two queries only: each failed attempt on the dead server doubles its
    # backoff, and the test wants it short.
    for i, tcp in enumerate((False, True)):
        answers, elapsed = _who(s.port, f"down{i}", tcp=tcp)
        assert answers == ["dot"]
        assert elapsed < ANSWER_WITHIN, f"answer took {elapsed:.2f}s"

    doh.start()
    restarted = time.monotonic()
    back = None
    for i in range(60):
        answers, _ = _who(s.port, f"poll{i}")
        if answers == ["doh"]:
            back = time.monotonic() - restarted
            break
        assert answers == ["dot"]
        if time.monotonic() - restarted > 10:
            break
        time.sleep(0.2)
    assert back is not None, "queries never went back to the DoH upstream"
    assert back < 6.0, f"back on DoH only {back:.1f}s after it returned"
    # First in conf order again: it keeps answering.
    for i, tcp in enumerate((False, True)):
        assert _who(s.port, f"after{i}", tcp=tcp)[0] == ["doh"]
    assert s.alive()
