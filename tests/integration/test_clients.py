"""What the listener does with clients it should not trust: garbage packets
do not take it down, and addresses outside `allow` are REFUSED without a
byte going upstream; and with clients in a hurry: a burst it cannot read
at once waits in the socket, an EDNS version it does not speak gets
BADVERS, and a class no forwarder can merge (ANY, NONE) gets NOTIMP."""

import os
import selectors
import signal
import socket
import struct
import time

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

import clients
import servers

GARBAGE_WAIT = 0.5


def _udp_exchange(port, payload):
    """Send raw bytes; return whatever comes back within a short wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(GARBAGE_WAIT)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def _still_answers(s):
    for tcp in (False, True):
        q, r = clients.ask(s.port, servers.zone_name(11), "A", tcp=tcp)
        assert r.id == q.id
        assert clients.answer_strings(r, "A") == [servers.zone_a(11)]
    assert s.alive()


@pytest.fixture
def resolver(upstream, stubborn):
    first = upstream("first")
    s = stubborn([first.spec()])
    s.upstream = first
    return s


def test_malformed_udp_does_not_crash(resolver):
    header_only = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    # A question whose name runs past the end of the packet.
    truncated_name = header_only + b"\x07example\x03co"
    # A compression pointer that points at itself.
    pointer_loop = header_only + b"\xc0\x0c\x00\x01\x00\x01"
    response_bit = struct.pack("!HHHHHH", 0x4343, 0x8180, 1, 0, 0, 0) + \
        dns.message.make_query("a.zone.test", "A").to_wire()[12:]
    packets = [os.urandom(5), b"", b"\x00", header_only, truncated_name, pointer_loop,
               response_bit, os.urandom(512)]
    for p in packets:
        reply = _udp_exchange(resolver.port, p)
        if reply is not None and p in (header_only, truncated_name, pointer_loop):
            # Answering is optional; answering anything but FORMERR to a
            # question it could not read is not.
            assert len(reply) >= 12
            rid, flags = struct.unpack("!HH", reply[:4])
            assert rid == struct.unpack("!H", p[:2])[0]
            assert flags & 0x8000, "reply without the QR bit"
            assert flags & 0x000F == dns.rcode.FORMERR, f"rcode {flags & 0xF}"
        if p is response_bit:
            # A response is never answered: that is how reflection loops start.
            assert reply is None, reply
        assert resolver.alive(), f"stubborn died on {p!r}"
    _still_answers(resolver)
    assert resolver.upstream.queries_seen() >= 1


def test_malformed_tcp_does_not_crash(resolver):
    port = resolver.port
    # Framed garbage, then a frame promising more than ever arrives, then a
    # bare half length prefix: each connection is simply closed by the client.
    for payload in [struct.pack("!H", 5) + os.urandom(5),
                    struct.pack("!H", 512) + b"abc",
                    b"\x00",
                    struct.pack("!H", 0)]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(GARBAGE_WAIT)
            try:
                s.recv(65535)
            except (socket.timeout, ConnectionError):
                pass
        assert resolver.alive()
    _still_answers(resolver)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_outside_allow_is_refused(upstream, stubborn, tcp):
    first = upstream("first")
    s = stubborn([first.spec()], allow="127.0.0.2/32")
    q, r = clients.ask(s.port, servers.zone_name(1), "A", tcp=tcp, source="127.0.0.1")
    assert r.id == q.id
    assert r.rcode() == dns.rcode.REFUSED, clients.rcode_text(r)
    assert r.answer == []
    # Whatever it asks: a class answered NOTIMP inside is REFUSED too.
    ask = dns.query.tcp if tcp else dns.query.udp
    q = dns.message.make_query(servers.zone_name(1), "A", rdclass="ANY")
    r = ask(q, "127.0.0.1", port=s.port, source="127.0.0.1",
            timeout=clients.CLIENT_TIMEOUT)
    assert r.rcode() == dns.rcode.REFUSED, clients.rcode_text(r)
    assert first.queries_seen() == 0, first.queries()
    # The one allowed address still gets answers on the same listener.
    q, r = clients.ask(s.port, servers.zone_name(2), "A", tcp=tcp, source="127.0.0.2")
    assert clients.answer_strings(r, "A") == [servers.zone_a(2)]


def test_burst_waits_in_the_kernel_while_the_loop_is_busy(resolver):
    """1,000 queries arrive while the loop cannot read (the process is
    stopped): the UDP socket holds them all (Linux's default buffer holds
    about 250), and each is answered once the loop runs again."""
    n = 1000
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    sel = selectors.DefaultSelector()
    pending = {}
    os.kill(resolver.proc.pid, signal.SIGSTOP)
    try:
        for k, s in enumerate(socks):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            sel.register(s, selectors.EVENT_READ, k)
        for i in range(n):
            q = dns.message.make_query(servers.zone_name(i % servers.ZONE_NAMES), "A")
            q.id = i
            pending[(i % len(socks), i)] = i % servers.ZONE_NAMES
            socks[i % len(socks)].sendto(q.to_wire(), ("127.0.0.1", resolver.port))
    finally:
        os.kill(resolver.proc.pid, signal.SIGCONT)
    wrong = []
    try:
        deadline = time.monotonic() + 20
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                while True:
                    try:
                        r = dns.message.from_wire(key.fileobj.recv(65535))
                    except BlockingIOError:
                        break
                    i = pending.pop((key.data, r.id), None)
                    if i is not None and (clients.answer_strings(r, "A") !=
                                          [servers.zone_a(i)]):
                        wrong.append((r.id, clients.rcode_text(r)))
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert not pending, f"{len(pending)} of {n} unanswered"
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_edns_version_above_0_is_answered_badvers(resolver, tcp):
    """RFC 6891 6.1.3: BADVERS, with an OPT of version 0 (the one we
    speak), and nothing asked upstream."""
    before = resolver.upstream.queries_seen()
    q = dns.message.make_query(servers.zone_name(5), "A", use_edns=1, want_dnssec=True)
    ask = dns.query.tcp if tcp else dns.query.udp
    r = ask(q, "127.0.0.1", port=resolver.port, timeout=clients.CLIENT_TIMEOUT)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.BADVERS, clients.rcode_text(r)
    assert r.edns == 0 and r.answer == []
    assert r.ednsflags & dns.flags.DO
    assert resolver.upstream.queries_seen() == before
    # Version 0 from the same client is answered as ever.
    q = dns.message.make_query(servers.zone_name(5), "A", use_edns=0)
    r = ask(q, "127.0.0.1", port=resolver.port, timeout=clients.CLIENT_TIMEOUT)
    assert clients.answer_strings(r, "A") == [servers.zone_a(5)]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_class_any_is_answered_notimp_locally(resolver, tcp):
    """QCLASS ANY (every class at once) and NONE (UPDATE's): NOTIMP at
    once, nothing asked upstream (unbound drops them: a client would wait
    out its timeout, and three in a row would mark the upstream down)."""
    before = resolver.upstream.queries_seen()
    ask = dns.query.tcp if tcp else dns.query.udp
    for rdclass in ("ANY", "NONE", "ANY", "ANY"):
        q = dns.message.make_query(servers.zone_name(6), "A", rdclass=rdclass)
        t = time.monotonic()
        r = ask(q, "127.0.0.1", port=resolver.port, timeout=clients.CLIENT_TIMEOUT)
        assert time.monotonic() - t < 0.5
        assert r.id == q.id and r.question == q.question
        assert r.rcode() == dns.rcode.NOTIMP, clients.rcode_text(r)
    assert resolver.upstream.queries_seen() == before
    q, r = clients.ask(resolver.port, servers.zone_name(6), "A", tcp=tcp)
    assert clients.answer_strings(r, "A") == [servers.zone_a(6)]


def test_allow_covering_client_answers(upstream, stubborn):
    first = upstream("first")
    s = stubborn([first.spec()], allow="127.0.0.0/8, ::1/128")
    for tcp in (False, True):
        q, r = clients.ask(s.port, servers.zone_name(3), "A", tcp=tcp, source="127.0.0.1")
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "A") == [servers.zone_a(3)]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_refusals_keep_the_clients_opt(resolver, tcp):
    """RFC 6891 6.1.1: a query with an OPT gets one back, NOTIMP for
    another opcode and FORMERR for other than one question included."""
    ask = dns.query.tcp if tcp else dns.query.udp
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS):
        q = dns.message.make_query(servers.zone_name(4), "SOA", use_edns=0,
                                   want_dnssec=True)
        q.set_opcode(opcode)
        r = ask(q, "127.0.0.1", port=resolver.port, timeout=clients.CLIENT_TIMEOUT)
        assert r.id == q.id
        assert r.rcode() == dns.rcode.NOTIMP, clients.rcode_text(r)
        assert r.edns == 0 and r.ednsflags & dns.flags.DO, (opcode, r.edns)
    # No question, then two (the second compressed, as dnspython writes
    # it), each with an OPT: FORMERR with an OPT.
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    question = dns.message.make_query(servers.zone_name(4), "A").to_wire()[12:]
    two = dns.message.make_query(servers.zone_name(4), "A", id=0x5151)
    two.find_rrset(two.question, dns.name.from_text("www." + servers.zone_name(4)),
                   dns.rdataclass.IN, dns.rdatatype.A, create=True)
    two_wire = two.to_wire()
    assert b"\xc0" in two_wire[12:], "the second question is not compressed"
    for qd, body in ((0, b""), (2, two_wire[12:])):
        wire = struct.pack("!HHHHHH", 0x5151, 0x0100, qd, 0, 0, 1) + body + opt
        if tcp:
            with socket.create_connection(("127.0.0.1", resolver.port), timeout=5) as c:
                c.sendall(struct.pack("!H", len(wire)) + wire)
                reply = dns.query.receive_tcp(c, time.time() + 5)[0]
        else:
            reply = dns.message.from_wire(_udp_exchange(resolver.port, wire))
        assert reply.id == 0x5151
        assert reply.rcode() == dns.rcode.FORMERR, clients.rcode_text(reply)
        assert reply.edns == 0, f"QDCOUNT {qd}: no OPT in the answer"
    # Two OPTs: the OPT is what broke, and the answer goes without.
    wire = struct.pack("!HHHHHH", 0x5252, 0x0100, 1, 0, 0, 2) + question + opt * 2
    reply = dns.message.from_wire(_udp_exchange(resolver.port, wire))
    assert reply.rcode() == dns.rcode.FORMERR and reply.edns == -1
    _still_answers(resolver)
