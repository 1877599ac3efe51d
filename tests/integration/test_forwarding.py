"""Plain forwarding: whatever a client asks over UDP or TCP reaches a good
upstream over DoT and comes back unchanged in meaning, with the client's ID."""

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

import clients
import servers
from servers import zone_a, zone_aaaa, zone_name, zone_txt


@pytest.fixture
def resolver(upstream, stubborn, certs):
    first = upstream("first")
    s = stubborn([first.spec(pins=[certs["good"].pin])])
    s.upstreams = [first]
    return s


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dnspython_answers_match_zone(resolver, tcp):
    for rdtype, expected in [("A", zone_a(7)), ("AAAA", zone_aaaa(7)), ("TXT", zone_txt(7))]:
        q, r = clients.ask(resolver.port, zone_name(7), rdtype, tcp=tcp)
        assert r.id == q.id
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, rdtype) == [expected]
    q, r = clients.ask(resolver.port, "a.zone.test", "A", tcp=tcp)
    assert clients.answer_strings(r, "A") == ["192.0.2.1"]
    assert resolver.upstreams[0].queries_seen() >= 1


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_kdig(resolver, kdig_bin, tcp):
    a = clients.kdig(kdig_bin, resolver.port, zone_name(42), "A", tcp=tcp)
    assert a.status == "NOERROR", a.output
    assert a.answers == [zone_a(42)], a.output
    a = clients.kdig(kdig_bin, resolver.port, zone_name(43), "TXT", tcp=tcp)
    assert a.answers == [zone_txt(43)], a.output


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dig(resolver, dig_bin, tcp):
    a = clients.dig(dig_bin, resolver.port, zone_name(44), "AAAA", tcp=tcp)
    assert a.status == "NOERROR", a.output
    assert a.answers == [zone_aaaa(44)], a.output


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_nxdomain(resolver, kdig_bin, tcp):
    q, r = clients.ask(resolver.port, "missing.zone.test", "A", tcp=tcp)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NXDOMAIN, clients.rcode_text(r)
    assert r.answer == []
    a = clients.kdig(kdig_bin, resolver.port, "also-missing.zone.test", "A", tcp=tcp)
    assert a.status == "NXDOMAIN", a.output


def test_large_answer_is_truncated_over_udp_and_whole_over_tcp(resolver, kdig_bin):
    expected = sorted(servers.big_txt(i) for i in range(servers.BIG_COUNT))
    # Without EDNS a UDP answer may not exceed 512 bytes (RFC 1035): a
    # truncated reply with TC set tells the client to retry over TCP.
    q = dns.message.make_query(servers.BIG, "TXT")
    q.id = 0x5151
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(clients.CLIENT_TIMEOUT)
        s.sendto(q.to_wire(), ("127.0.0.1", resolver.port))
        wire = s.recv(65535)
    assert len(wire) <= 512, len(wire)
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    assert r.flags & dns.flags.TC, dns.flags.to_text(r.flags)

    q, r = clients.ask(resolver.port, servers.BIG, "TXT", tcp=True)
    assert sorted(clients.answer_strings(r, "TXT")) == expected

    # The ordinary client path: UDP, see TC, retry over TCP.
    a = clients.kdig(kdig_bin, resolver.port, servers.BIG, "TXT")
    assert a.status == "NOERROR", a.output
    assert sorted(a.answers) == expected, a.output


def test_query_id_is_the_clients(resolver):
    # IDs chosen to catch a resolver that leaks its upstream-side ID back
    # (0 and 0xFFFF are the edges, the rest arbitrary).
    for i, qid in enumerate([0, 1, 0x1234, 0xBEEF, 0xFFFF]):
        for tcp in (False, True):
            q = dns.message.make_query(zone_name(100 + i), "A")
            q.id = qid
            r = (dns.query.tcp if tcp else dns.query.udp)(
                q, "127.0.0.1", port=resolver.port, timeout=clients.CLIENT_TIMEOUT)
            assert r.id == qid
            assert clients.answer_strings(r, "A") == [zone_a(100 + i)]


def test_200_concurrent_udp_queries(resolver):
    n = 200
    start = threading.Barrier(n)

    def one(i):
        rdtype = ("A", "AAAA", "TXT")[i % 3]
        q = clients.make_query(zone_name(i), rdtype)
        # Everybody sends at once, so stubborn really holds 200 questions in
        # flight rather than a queue of them.
        start.wait(timeout=30)
        r = dns.query.udp(q, "127.0.0.1", port=resolver.port, timeout=10)
        return i, rdtype, q.id, r

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    expected = {"A": zone_a, "AAAA": zone_aaaa, "TXT": zone_txt}
    for i, rdtype, qid, r in results:
        assert r.id == qid
        assert r.rcode() == dns.rcode.NOERROR, (i, clients.rcode_text(r))
        assert clients.answer_strings(r, rdtype) == [expected[rdtype](i)], i


def test_answers_due_together_do_not_wait_for_a_delayed_ack(resolver):
    """Two questions in flight at once over DoT.  unbound leaves Nagle's
    algorithm on, so it holds its second answer until the first one is
    acknowledged, and Linux delays that ACK (40 ms at least) hoping to
    send it with the next query, unless stubborn asks for it at once.
    Without that, most pairs took over 40 ms here."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    slow = []
    try:
        for i in range(60):
            qs = [clients.make_query(zone_name(2 * i + j), "A") for j in (0, 1)]
            t0 = time.monotonic()
            for q in qs:
                sock.sendto(q.to_wire(), ("127.0.0.1", resolver.port))
            got = {}
            while len(got) < 2:
                r = dns.message.from_wire(sock.recvfrom(65535)[0])
                got[r.id] = r
            took = time.monotonic() - t0
            for j, q in enumerate(qs):
                assert clients.answer_strings(got[q.id], "A") == [zone_a(2 * i + j)]
            if took > 0.030:
                slow.append(round(took * 1000, 1))
            # Idle in between, as a client at a few hundred qps would be.
            time.sleep(0.02)
    finally:
        sock.close()
    assert len(slow) <= 6, f"{len(slow)} of 60 pairs took over 30 ms: {slow}"


def test_200_concurrent_tcp_queries(resolver):
    n = 200
    start = threading.Barrier(n)

    def one(i):
        q = clients.make_query(zone_name(i), "A")
        start.wait(timeout=30)
        return i, q.id, dns.query.tcp(q, "127.0.0.1", port=resolver.port, timeout=10)

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    for i, qid, r in results:
        assert r.id == qid
        assert clients.answer_strings(r, "A") == [zone_a(i)], i


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def test_pipelined_queries_on_one_tcp_connection(resolver):
    # RFC 7766: a client may send many queries on one connection without
    # waiting; replies may come in any order and are matched by ID.
    n = 50
    queries = {}
    wire = b""
    for i in range(n):
        q = dns.message.make_query(zone_name(200 + i), "A")
        q.id = 1000 + i
        queries[q.id] = 200 + i
        w = q.to_wire()
        wire += struct.pack("!H", len(w)) + w
    with socket.create_connection(("127.0.0.1", resolver.port), timeout=10) as s:
        s.sendall(wire)
        for _ in range(n):
            length = struct.unpack("!H", _recv_exact(s, 2))[0]
            r = dns.message.from_wire(_recv_exact(s, length))
            assert r.id in queries, r.id
            i = queries.pop(r.id)
            assert clients.answer_strings(r, "A") == [zone_a(i)]
    assert not queries


def test_half_closed_tcp_client_gets_every_answer(resolver):
    # RFC 7766 6.2.1: a client may send its queries, then shut down its
    # side.  Every answer still comes, the cached one and the ones the
    # upstream is still working on, and then the server closes.
    cached = 260
    clients.ask(resolver.port, zone_name(cached), "A", tcp=True)
    queries = {}
    wire = b""
    for qid, i in enumerate([cached, 261, 262, 263], start=2000):
        q = dns.message.make_query(zone_name(i), "A")
        q.id = qid
        queries[qid] = i
        w = q.to_wire()
        wire += struct.pack("!H", len(w)) + w
    with socket.create_connection(("127.0.0.1", resolver.port), timeout=10) as s:
        s.sendall(wire)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65535):
            data += chunk
    while data:
        length = struct.unpack("!H", data[:2])[0]
        r = dns.message.from_wire(data[2:2 + length])
        data = data[2 + length:]
        assert r.id in queries, r.id
        assert clients.answer_strings(r, "A") == [zone_a(queries.pop(r.id))]
    assert not queries, f"no answer to {sorted(queries)}"


def test_ipv6_listener(resolver, ipv6, kdig_bin):
    if not ipv6:
        pytest.skip("::1 is not usable on this machine")
    for tcp in (False, True):
        q, r = clients.ask(resolver.port, zone_name(9), "A", tcp=tcp, host="::1")
        assert r.id == q.id
        assert clients.answer_strings(r, "A") == [zone_a(9)]
    a = clients.kdig(kdig_bin, resolver.port, zone_name(10), "A", host="::1")
    assert a.answers == [zone_a(10)], a.output


def test_two_upstreams_first_is_used(upstream, stubborn, certs):
    # Sections are tried in the order written: with both healthy, the first
    # one answers.
    first, second = upstream("first"), upstream("second")
    s = stubborn([first.spec(), second.spec()])
    for i in range(5):
        q, r = clients.ask(s.port, servers.who_name(f"order{i}"), "TXT")
        assert clients.answer_strings(r, "TXT") == ["first"]
    assert second.queries_seen() == 0
