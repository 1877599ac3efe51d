"""An upstream that passes the trust gate and then lies: replies with the
wrong ID or question, replies out of order, garbage frames, hang-ups.
stubborn must hand each client the one reply that answers its own question,
keep waiting past the lies, and fail over when the truth never comes."""

import os
import re
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

import clients
import hostile
import servers

TCP = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]

# Every decoy carries its own data, so a decoy that got through shows up
# as a wrong answer rather than only as a missing one.
DECOY_A = "192.0.2.66"


def _other_name(name):
    """Same length, one letter changed: only a byte-by-byte comparison of
    the labels tells the two apart."""
    first = "x" if name[0] != "x" else "y"
    return first + name[1:]


def decoys(query):
    q = query.question[0]
    rdtype = q.rdtype
    name = q.name.to_text()
    data = {"A": DECOY_A, "AAAA": "2001:db8::66", "TXT": '"decoy"'}[
        dns.rdatatype.to_text(rdtype)]
    return [
        hostile.reply(query, data, msg_id=(query.id + 0x5555) & 0xFFFF),
        hostile.reply(query, data, name=_other_name(name)),
        # The asked name plus a label: a comparison that stops at the end
        # of the query's name would take it.
        hostile.reply(query, data, name="extra." + name),
        hostile.reply(query, "2001:db8::66" if rdtype != dns.rdatatype.AAAA else "192.0.2.66",
                      rdtype="AAAA" if rdtype != dns.rdatatype.AAAA else "A"),
        hostile.reply(query, None, rdclass=dns.rdataclass.CH),
        # Right ID and question, but another opcode (STATUS): a response
        # copies the query's (RFC 1035 4.1.1).
        _opcode(hostile.reply(query, data), 2),
    ]


def _opcode(wire, opcode):
    return wire[:2] + bytes([(wire[2] & 0x87) | (opcode << 3)]) + wire[3:]


class DecoysThenTruth(hostile.Script):
    def on_query(self, conn, query):
        conn.send(*decoys(query), hostile.correct(query))


class OnlyDecoys(hostile.Script):
    def on_query(self, conn, query):
        conn.send(*decoys(query))


class GarbageThenTruth(hostile.Script):
    def on_query(self, conn, query):
        wire = query.to_wire()
        conn.send(hostile.frame(os.urandom(5)), raw=True)
        # Shapes a sloppy parser might mistake for the reply: an empty
        # frame, the right ID with nothing after the header, and stubborn's
        # own query echoed back (right ID and question, but QR clear).
        conn.send(b"\x00\x00", raw=True)
        conn.send(wire[:12], wire)
        conn.send(hostile.correct(query))


class CaseFolded(hostile.Script):
    """The only reply echoes the name in another case, as a server doing
    0x20 randomisation might (RFC 4343 makes names case-insensitive)."""

    def on_query(self, conn, query):
        name = query.question[0].name.to_text().swapcase()
        conn.send(hostile.reply(query, hostile.DEFAULT_DATA["A"], name=name))


class HangUp(hostile.Script):
    """Read the query, then drop the connection; from connection `after`
    on, answer properly."""

    def __init__(self, after=None):
        self.after = after

    def on_query(self, conn, query):
        if self.after is not None and conn.index >= self.after:
            conn.send(hostile.correct(query))
        else:
            conn.close()


class Reverse(hostile.Script):
    """Hold queries until `n` have arrived (or the line goes quiet), then
    answer them last first."""

    QUIET = 0.5

    def __init__(self, n, data):
        self.n = n
        self.data = data
        self.batches = []
        self.order = []

    def on_query(self, conn, query):
        pending = conn.state.setdefault("pending", [])
        pending.append(query)
        conn.state["last"] = time.monotonic()
        if len(pending) >= self.n:
            self._flush(conn)

    def on_idle(self, conn):
        # Without this a short batch would wait forever and the test would
        # report timeouts instead of the batch size it got.
        if conn.state.get("pending") and time.monotonic() - conn.state["last"] > self.QUIET:
            self._flush(conn)

    def _flush(self, conn):
        pending = conn.state.pop("pending")
        self.batches.append(len(pending))
        replies = []
        for query in reversed(pending):
            name = query.question[0].name.to_text()
            self.order.append(name)
            replies.append(hostile.correct(query, self.data.get(name.lower(), "192.0.2.99")))
        conn.send(*replies)


class Trickle(hostile.Script):
    """Hold queries until `n` have arrived, then answer `slow` of them one
    at a time, `gap` seconds apart, and the rest at once; `sent` maps each
    name to when its answer left."""

    def __init__(self, n, slow, gap):
        self.n, self.slow, self.gap = n, slow, gap
        self.sent = {}

    def on_query(self, conn, query):
        pending = conn.state.setdefault("pending", [])
        pending.append(query)
        if len(pending) < self.n:
            return
        for i, q in enumerate(conn.state.pop("pending")):
            if 0 < i <= self.slow:
                time.sleep(self.gap)
            conn.send(hostile.correct(q))
            self.sent[q.question[0].name.to_text()] = time.monotonic()


def _ok(port, name, rdtype="A", tcp=False, timeout=clients.CLIENT_TIMEOUT):
    q, r = clients.ask(port, name, rdtype, tcp=tcp, timeout=timeout)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    return clients.answer_strings(r, rdtype)


@pytest.mark.parametrize("delivery", hostile.DELIVERIES)
@pytest.mark.parametrize("tcp", TCP)
def test_decoys_are_discarded(hostile, stubborn, tcp, delivery):
    h = hostile(DecoysThenTruth(), delivery=delivery)
    s = stubborn([h.spec()])
    for i, (rdtype, expected) in enumerate([("A", "192.0.2.77"),
                                            ("AAAA", "2001:db8::77"),
                                            ("TXT", "hostile")]):
        name = f"q{i}.hostile.test"
        assert _ok(s.port, name, rdtype, tcp=tcp) == [expected]
    assert [q[2:] for q in h.queries()] == [
        ("q0.hostile.test.", "A"), ("q1.hostile.test.", "AAAA"), ("q2.hostile.test.", "TXT")]
    assert h.connections == 1
    assert s.alive()


def test_name_differing_only_in_case_is_accepted(hostile, stubborn):
    h = hostile(CaseFolded())
    s = stubborn([h.spec()])
    for tcp in (False, True):
        assert _ok(s.port, f"MiXed{int(tcp)}.Hostile.test", tcp=tcp) == ["192.0.2.77"]


def test_replies_in_reverse_order_reach_their_own_clients(hostile, stubborn):
    n = 20
    names = [f"p{i}.hostile.test" for i in range(n)]
    data = {f"{name}.": f"198.51.100.{i + 1}" for i, name in enumerate(names)}
    script = Reverse(n, data)
    h = hostile(script)
    s = stubborn([h.spec()])
    start = threading.Barrier(n)

    def one(i):
        q = clients.make_query(names[i], "A")
        # All at once, so stubborn has every query written before the
        # server (which waits for all n) answers any of them.
        start.wait(timeout=10)
        send = dns.query.tcp if i % 2 else dns.query.udp
        return i, q, send(q, "127.0.0.1", port=s.port, timeout=clients.CLIENT_TIMEOUT)

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    for i, q, r in results:
        assert r.id == q.id
        assert r.rcode() == dns.rcode.NOERROR, (names[i], clients.rcode_text(r))
        assert clients.answer_strings(r, "A") == [f"198.51.100.{i + 1}"], names[i]
    assert h.connections == 1, "queries were not pipelined on one connection"
    assert script.batches == [n], "not all queries were in flight at once"
    assert sorted(q[2] for q in h.queries()) == sorted(data)
    # The server really answered out of order, not in the order asked.
    received = [q[2] for q in h.queries()]
    assert script.order == received[::-1]


@pytest.mark.parametrize("tcp", TCP)
def test_only_decoys_fails_over_to_next_upstream(hostile, upstream, stubborn, tcp):
    h = hostile(OnlyDecoys())
    s = stubborn([h.spec(), upstream("second").spec()])
    t0 = time.monotonic()
    assert _ok(s.port, servers.who_name(f"decoys{int(tcp)}"), "TXT", tcp=tcp,
               timeout=6.0) == ["second"]
    elapsed = time.monotonic() - t0
    assert elapsed < 4.0, f"answer took {elapsed:.2f}s"
    assert len(h.queries()) == 1, h.queries()
    assert s.alive()


@pytest.mark.parametrize("delivery", ["record", "together"])
def test_garbage_frames_are_skipped(hostile, stubborn, delivery):
    h = hostile(GarbageThenTruth(), delivery=delivery)
    s = stubborn([h.spec()])
    for tcp in (False, True):
        assert _ok(s.port, f"g{int(tcp)}.hostile.test", tcp=tcp) == ["192.0.2.77"]
    assert s.alive()
    assert h.connections == 1


def test_hangup_after_query_is_answered_by_next_upstream(hostile, upstream, stubborn):
    h = hostile(HangUp())
    s = stubborn([h.spec(), upstream("second").spec()])
    for i, tcp in enumerate((False, True)):
        t0 = time.monotonic()
        assert _ok(s.port, servers.who_name(f"hangup{i}"), "TXT", tcp=tcp,
                   timeout=6.0) == ["second"]
        elapsed = time.monotonic() - t0
        assert elapsed < 4.0, f"answer took {elapsed:.2f}s"
    assert h.queries(), "the hostile upstream never got the query"
    assert s.alive()


def test_hangup_once_is_retried_on_the_same_upstream(hostile, upstream, stubborn):
    # A connection lost with a query in flight says nothing about the
    # upstream's answers: stubborn gives it one more connection.
    h = hostile(HangUp(after=2))
    s = stubborn([h.spec(), upstream("second").spec()])
    assert _ok(s.port, "once.hostile.test", timeout=6.0) == ["192.0.2.77"]
    assert [q[0] for q in h.queries()] == [1, 2]
    assert s.alive()


def test_upstream_that_hangs_up_every_time_is_marked_down(hostile, upstream, stubborn):
    # Three connections lost with queries in flight, no answer between:
    # down, so the next queries go straight to the next upstream instead
    # of costing two connections each.
    h = hostile(HangUp())
    s = stubborn([h.spec(), upstream("second").spec()])
    for i in range(8):
        assert _ok(s.port, servers.who_name(f"hangups{i}"), "TXT", tcp=bool(i % 2),
                   timeout=6.0) == ["second"]
    assert re.search(r"upstream hostile: down \(connections close with queries in flight\)",
                     s.log_text()), s.log_text()
    # Within the first 1 s backoff, unless the machine is very slow.
    assert len(h.queries()) <= 4, h.queries()
    assert s.alive()


def test_answers_trickling_in_under_load_are_not_held_back(hostile, stubborn):
    # With many queries in flight stubborn wakes for a batch of answers,
    # not for each (see "Performance" in README.md); an answer that arrives
    # alone must still be handed on at once, not wait for the next one.
    n, slow, gap = 40, 10, 0.12     # the trickle ends before the 1.5 s attempt timeout
    script = Trickle(n, slow, gap)
    h = hostile(script)
    s = stubborn([h.spec()])
    names = [f"t{i}.hostile.test" for i in range(n)]
    start = threading.Barrier(n)

    def one(name):
        q = clients.make_query(name, "A")
        start.wait(timeout=10)
        r = dns.query.udp(q, "127.0.0.1", port=s.port, timeout=clients.CLIENT_TIMEOUT)
        return name, r, time.monotonic()

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, names))
    late = []
    for name, r, at in results:
        assert r.rcode() == dns.rcode.NOERROR, (name, clients.rcode_text(r))
        assert clients.answer_strings(r, "A") == ["192.0.2.77"], name
        delay = at - script.sent[f"{name}."]
        if delay > gap / 2:
            late.append((name, round(delay, 3)))
    assert not late, f"answers held back until the next one came: {late}"
    assert h.connections == 1 and len(h.queries()) == n


def _malformed(kind, query):
    """The right reply to query, made unreadable past its question.  It has
    no OPT, so records added at the end are in the answer section."""
    r = dns.message.from_wire(hostile.correct(query))
    r.use_edns(False)
    wire = bytearray(r.to_wire())
    an = struct.unpack("!H", wire[6:8])[0]
    if kind == "pointer-loop":
        # One more answer whose owner points at itself.
        here = len(wire)
        wire += struct.pack("!HHHIH", 0xC000 | here, 1, 1, 300, 4) + bytes([192, 0, 2, 9])
        wire[6:8] = struct.pack("!H", an + 1)
    elif kind == "rdata-pointer-loop":
        # One more answer, a CNAME whose target points at itself.
        here = len(wire)
        wire += struct.pack("!HHHIHH", 0xC00C, 5, 1, 300, 2, 0xC000 | (here + 12))
        wire[6:8] = struct.pack("!H", an + 1)
    elif kind == "owner-pointer-loop":
        # Two more: a TXT whose text, read as a name, points forward to the
        # next owner, which points back into that text.
        here = len(wire)
        wire += struct.pack("!HHHIH", 0xC00C, 16, 1, 300, 4) + b"\x01a" + \
            struct.pack("!H", 0xC000 | (here + 16))
        wire += struct.pack("!HHHIH", 0xC000 | (here + 12), 1, 1, 300, 4) + bytes([192, 0, 2, 9])
        wire[6:8] = struct.pack("!H", an + 2)
    elif kind == "count-past-end":
        wire[6:8] = struct.pack("!H", 65535)
    elif kind == "cut-short":
        wire = wire[:-3]
    elif kind == "two-opt":
        opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
        wire += opt + opt
        wire[10:12] = struct.pack("!H", struct.unpack("!H", wire[10:12])[0] + 2)
    elif kind == "opt-in-answer":
        wire += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
        wire[6:8] = struct.pack("!H", an + 1)
    return bytes(wire)


class Malformed(hostile.Script):
    def __init__(self, kind):
        self.kind = kind

    def on_query(self, conn, query):
        conn.send(_malformed(self.kind, query))


@pytest.mark.parametrize("kind", ["pointer-loop", "rdata-pointer-loop", "owner-pointer-loop",
                                  "count-past-end", "cut-short", "two-opt", "opt-in-answer"])
def test_malformed_answer_fails_over(hostile, upstream, stubborn, kind):
    # The question matches but the records do not parse: clients would get
    # what they cannot read.  The next upstream answers instead, at once.
    h = hostile(Malformed(kind))
    s = stubborn([h.spec(), upstream("second").spec()])
    for i, tcp in enumerate((False, True)):
        t0 = time.monotonic()
        assert _ok(s.port, servers.who_name(f"bad{i}"), "TXT", tcp=tcp) == ["second"]
        assert time.monotonic() - t0 < 1.0, "waited for a timeout instead"
    assert s.alive()


def _txt_answer_of(query, size):
    """A reply to query of exactly `size` bytes, TXT records and no OPT."""
    r = dns.message.make_response(query)
    r.use_edns(False)
    name = query.question[0].name
    base = len(r.to_wire())
    per = 2 + 10 + 1 + 255      # owner pointer, fixed fields, one string
    n, rest = divmod(size - base, per)
    if rest < 14:               # too little for a record of its own
        n, rest = n - 1, rest + per
    texts = [f'"{i:05d}{"a" * 250}"' for i in range(n)] + [f'"{"b" * (rest - 13)}"']
    r.answer.append(dns.rrset.from_text_list(name, 300, "IN", "TXT", texts))
    wire = r.to_wire(max_size=65535)
    assert len(wire) == size, len(wire)
    return wire


class Huge(hostile.Script):
    def on_query(self, conn, query):
        conn.send(_txt_answer_of(query, 65535))


def test_answer_too_big_for_a_tcp_frame_with_our_opt_is_truncated(hostile, stubborn):
    # 65,535 bytes from the upstream, plus the OPT an EDNS client gets, is
    # more than a TCP length prefix can say: the client gets a truncated
    # answer, framed right, not a wrapped length and stray bytes.
    h = hostile(Huge())
    s = stubborn([h.spec()])
    q = dns.message.make_query("huge.hostile.test", "TXT", use_edns=0, payload=1232)
    r = dns.query.tcp(q, "127.0.0.1", port=s.port, timeout=10)
    assert r.id == q.id
    assert r.flags & dns.flags.TC, r.flags
    assert s.alive()
