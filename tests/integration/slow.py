"""Helpers for the cache, wire-format and upstream-health tests: a hostile
script that answers late (or as told), raw-socket clients that keep the exact
bytes of the answer, and readers for what an EDNS OPT record carries."""

import socket
import struct
import time

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

import clients
import hostile

OPT_ECS = 8
OPT_PADDING = 12
PAD_BLOCK = 128     # RFC 8467 4.1: queries are padded to a multiple of this


def wait_until(predicate, timeout=5.0, step=0.05):
    """Poll until predicate() is true or timeout passes; returns its last
    value, so the caller's assertion shows what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def settle(count, timeout=1.0):
    """Wait until count() has stopped changing for a moment: query logs are
    written after the answer went out, and a count read too early would
    make "no new query" pass by accident."""
    deadline = time.monotonic() + timeout
    last = count()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = count()
        if now == last:
            return now
        last = now
    return last


# --- answers the hostile server gives ---------------------------------------

def answer_for(server_name):
    """A correct reply to any query: who.* TXT names the server (so a test
    learns who answered), everything else gets hostile's default data."""
    def make(query):
        q = query.question[0]
        if q.rdtype == dns.rdatatype.TXT and q.name.to_text().lower().endswith(".who.zone.test."):
            return hostile.reply(query, f'"{server_name}"')
        return hostile.correct(query)
    return make


def negative(query, rcode=dns.rcode.NXDOMAIN, soa_ttl=300, minimum=300,
             zone="neg.test."):
    """NXDOMAIN (or NODATA with rcode NOERROR) with the zone's SOA in the
    authority section, its TTL and MINIMUM as given."""
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    r.authority.append(dns.rrset.from_text(
        zone, soa_ttl, "IN", "SOA",
        f"ns.{zone} admin.{zone} 1 3600 600 86400 {minimum}"))
    return r.to_wire()


def servfail(query):
    r = dns.message.make_response(query)
    r.set_rcode(dns.rcode.SERVFAIL)
    return r.to_wire()


class Delayed(hostile.Script):
    """Answer every query `delay` seconds after it arrived, with whatever
    make(query) returns (wire bytes).  Queries pipelined on one connection
    are answered independently: each waits its own delay, not its
    predecessors'.  Replies go out from the connection's own thread (on the
    next query or the next idle tick, which comes every hostile.TICK), as
    an SSL socket must not be written from two threads."""

    def __init__(self, delay, make):
        self.delay = delay
        self.make = make

    def on_query(self, conn, query):
        due = conn.state.setdefault("due", [])
        due.append((time.monotonic() + self.delay, self.make(query)))
        self._flush(conn)

    def on_idle(self, conn):
        self._flush(conn)

    def _flush(self, conn):
        due = conn.state.get("due", [])
        now = time.monotonic()
        ready = [w for t, w in due if t <= now]
        if ready:
            conn.state["due"] = [(t, w) for t, w in due if t > now]
            conn.send(*ready)


class Answer(Delayed):
    """Answer at once."""

    def __init__(self, make):
        super().__init__(0.0, make)


# --- clients that keep the bytes --------------------------------------------

def udp_raw(port, wire, host="127.0.0.1", timeout=clients.CLIENT_TIMEOUT):
    """Send one datagram, return the first reply's bytes as they came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (host, port))
        return s.recv(65535)


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def tcp_raw(port, wire, host="127.0.0.1", timeout=clients.CLIENT_TIMEOUT):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        n = struct.unpack("!H", _recv_exact(s, 2))[0]
        return _recv_exact(s, n)


def exchange(port, query, tcp=False, timeout=clients.CLIENT_TIMEOUT):
    """Send a prepared dnspython query; return (reply bytes, parsed reply)."""
    wire = query.to_wire()
    raw = (tcp_raw if tcp else udp_raw)(port, wire, timeout=timeout)
    return raw, dns.message.from_wire(raw)


def question_bytes(wire):
    """The header-less question section of a one-question message, exactly
    as it is on the wire (name case included)."""
    off = 12
    while True:
        n = wire[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0:
            raise ValueError("compressed name in the question")
        off += 1 + n
    return wire[12:off + 4]


def query(name, rdtype="A", qid=None, **kw):
    """A query with a chosen ID; kw goes to make_query (use_edns, payload,
    want_dnssec, options)."""
    q = dns.message.make_query(name, rdtype, **kw)
    if qid is not None:
        q.id = qid
    return q


def ttls(response):
    return [rrset.ttl for section in (response.answer, response.authority)
            for rrset in section]


# --- EDNS -------------------------------------------------------------------

def option_codes(msg):
    """The option codes of msg's OPT record, in order ([] without one)."""
    return [int(o.otype) for o in msg.options] if msg.edns >= 0 else []

