#!/usr/bin/python3
"""Write the seed corpus of tests/fuzz/fuzz_doh: what a DoH server sends.

Each seed is fuzz_doh's input (see tests/fuzz/fuzz_doh.c): a setup byte
(queries queued while connecting, less one, in bits 0-1; bit 2 puts an
empty server SETTINGS frame first), then chunks separated by SPLIT, each an
action byte (1 the connection timer fires, 2 the oldest query in flight
times out, 4 one more query is sent, 8 the server closes) and the server's
bytes.

The bytes come from a real HTTP/2 server (python3-h2) talking to an h2
client that asks what stubborn asks, in the order stubborn's nghttp2
client opens its streams (1, 3, 5...); frames no correct server sends are
written with hyperframe and hpack.  Debian: apt-get install python3-h2.

    tests/fuzz/gen_doh_seeds.py [DIR]    (default: fuzz_doh.in beside it)
"""

import os
import struct
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe import frame as hf

SPLIT = b"\n--split--\n"
TIMER, TIMEOUT, SEND, EOF = 1, 2, 4, 8
DNS_MESSAGE = "application/dns-message"

# fuzz_doh.c's questions: query slot i asks QUESTIONS[i % 4].
QUESTIONS = [("a.zone.test", 1), ("b.zone.test", 28), ("c.zone.test", 16),
             ("www.zone.test", 1)]


def qname(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def question(slot):
    name, qtype = QUESTIONS[slot % 4]
    return qname(name) + struct.pack(">HH", qtype, 1)


def query(slot):
    """The query as stubborn sends it over DoH (ID 0)."""
    return struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + question(slot)


def answer(slot, rcode=0, qr=True, records=1, rdata=None):
    """A reply to slot's question, with records answers pointing at it."""
    name, qtype = QUESTIONS[slot % 4]
    if rdata is None:
        rdata = {1: bytes([192, 0, 2, 1]), 28: bytes(15) + b"\1",
                 16: b"\x0bhello world"}[qtype]
    flags = (0x8000 if qr else 0) | 0x0180 | rcode
    msg = struct.pack(">HHHHHH", 0, flags, 1, records, 0, 0) + question(slot)
    for _ in range(records):
        msg += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 300,
                                         len(rdata)) + rdata
    return msg


def raw(frame):
    return frame.serialize()


def frame(ftype, flags, sid, payload):
    """Any frame, valid or not."""
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) +
            struct.pack(">I", sid) + payload)


def literal_block(headers):
    """A header block that leaves the HPACK dynamic table alone."""
    return Encoder().encode([NeverIndexedHeaderTuple(n, v)
                             for n, v in headers])


class Exchange:
    """A server (the seed's bytes) and the client stubborn stands for."""

    def __init__(self, queries=1, settings=None):
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False))
        self.client.local_settings = h2.settings.Settings(
            client=True, initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        self.client.initiate_connection()
        if settings:
            self.server.local_settings = h2.settings.Settings(
                client=False, initial_values=settings)
        self.server.initiate_connection()
        self.slots = {}         # stream -> query slot
        self.nslots = 0
        for _ in range(queries):
            self.request()
        self.chunks = []
        self.out = b""          # the server's bytes of the chunk
        self.take()             # its preface (SETTINGS) and SETTINGS ACK

    def request(self, slot=None):
        """The client opens the next stream (stubborn's submit)."""
        if slot is None:
            slot = self.nslots
            self.nslots += 1
        sid = self.client.get_next_available_stream_id()
        body = query(slot)
        self.client.send_headers(sid, [
            (":method", "POST"), (":scheme", "https"),
            (":authority", "dns.test"), (":path", "/dns-query"),
            ("content-type", DNS_MESSAGE), ("accept", DNS_MESSAGE),
            ("content-length", str(len(body)))])
        self.client.send_data(sid, body, end_stream=True)
        self.slots[sid] = slot
        self.to_server()
        return sid

    def to_server(self):
        data = self.client.data_to_send()
        if data:
            self.server.receive_data(data)

    def take(self):
        self.out += self.server.data_to_send()

    def to_client(self, data):
        """Let the client take data as nghttp2 would (window updates)."""
        for ev in self.client.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                self.client.acknowledge_received_data(
                    ev.flow_controlled_length, ev.stream_id)
        self.to_server()

    def respond(self, sid, body=None, status="200", ctype=DNS_MESSAGE,
                extra=(), end=True, frames=1, pad=None, clen=None):
        if body is None:
            body = answer(self.slots[sid])
        headers = [(":status", status)]
        if ctype is not None:
            headers.append(("content-type", ctype))
        headers.append(("content-length",
                        str(len(body)) if clen is None else clen))
        headers.extend(extra)
        self.server.send_headers(sid, headers, end_stream=end and not body)
        self.take()
        step = max(1, -(-len(body) // frames))
        for i in range(0, len(body), step):
            last = i + step >= len(body)
            self.server.send_data(sid, body[i:i + step],
                                  end_stream=end and last, pad_length=pad)
            self.take()

    def rst(self, sid, code):
        self.server.reset_stream(sid, code)
        self.take()

    def goaway(self, last, code=0, debug=None):
        self.server.close_connection(code, debug, last_stream_id=last)
        self.take()

    def ping(self, ack=False):
        if ack:
            self.out += raw(hf.PingFrame(0, flags=["ACK"], opaque_data=bytes(8)))
        else:
            self.server.ping(b"stubborn")
            self.take()

    def add(self, data):
        self.out += data

    def cut(self, action=0):
        """End the chunk; action runs once fuzz_doh has delivered it."""
        self.take()
        assert SPLIT not in self.out
        self.chunks.append(bytes([action]) + self.out)
        self.out = b""

    def seed(self, setup_extra=0):
        setup = ((self.nslots_initial - 1) & 3) | setup_extra
        return bytes([setup]) + SPLIT.join(self.chunks)


def exchange(queries=1, settings=None):
    ex = Exchange(queries, settings)
    ex.nslots_initial = queries
    return ex


def seeds():
    s = {}

    ex = exchange()
    ex.respond(1)
    ex.cut()
    s["ok-a"] = ex.seed()

    ex = exchange()
    ex.respond(1, ctype="Application/DNS-Message; charset=binary",
               frames=3, pad=7)
    ex.cut()
    s["ok-ctype-params-padded"] = ex.seed()

    ex = exchange(queries=2)
    ex.respond(3, frames=2)
    ex.respond(1)
    ex.cut()
    s["ok-two-reversed"] = ex.seed()

    ex = exchange(queries=4)
    for sid in (1, 3, 5, 7):
        ex.respond(sid, end=False)
    for sid in (7, 5, 3, 1):
        ex.server.end_stream(sid)
        ex.take()
    ex.cut()
    s["ok-four-interleaved"] = ex.seed()

    # The answer in pieces, spread over chunks (partial frames too).
    ex = exchange()
    ex.respond(1, body=answer(0, records=3))
    whole = ex.out
    ex.out = b""
    for i in range(0, len(whole), 23):
        ex.out = whole[i:i + 23]
        ex.cut()
    s["ok-split-frames"] = ex.seed()

    # An informational response first, then the answer with trailers.
    ex = exchange()
    ex.out += raw_headers(1, [(":status", "103"), ("link", "</x>")])
    ex.server.send_headers(1, [(":status", "200"),
                               ("content-type", DNS_MESSAGE)])
    ex.take()
    ex.server.send_data(1, answer(0))
    ex.take()
    ex.server.send_headers(1, [("x-trailer", "1")], end_stream=True)
    ex.take()
    ex.cut()
    s["ok-1xx-trailers"] = ex.seed()

    ex = exchange()
    ex.respond(1)
    ex.goaway(1)
    ex.cut()
    s["goaway-after-answer"] = ex.seed()

    # Stream 3 was never seen: refused, asked again elsewhere.
    ex = exchange(queries=2)
    preface, ex.out = ex.out, b""
    ex.respond(1)
    answered, ex.out = ex.out, b""
    ex.goaway(1, debug=b"shutting down")
    # h2 sends nothing after its GOAWAY; servers do, for streams it took.
    ex.out = preface + ex.out + answered
    ex.cut()
    s["goaway-refuses-stream"] = ex.seed()

    ex = exchange(queries=2)
    ex.goaway(0, code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
    ex.cut()
    s["goaway-error"] = ex.seed()

    # Refused: fuzz_doh sends it again at once, on stream 3.
    ex = exchange()
    ex.rst(1, h2.errors.ErrorCodes.REFUSED_STREAM)
    ex.cut()
    sid = ex.request(0)
    ex.respond(sid)
    ex.cut()
    s["rst-refused-retry"] = ex.seed()

    ex = exchange(queries=2)
    ex.rst(1, h2.errors.ErrorCodes.CANCEL)
    ex.rst(3, h2.errors.ErrorCodes.INTERNAL_ERROR)
    ex.cut()
    s["rst-cancel"] = ex.seed()

    ex = exchange()
    ex.respond(1, body=b"<html>not found</html>", status="404",
               ctype="text/html")
    ex.cut()
    s["status-404"] = ex.seed()

    ex = exchange()
    ex.out += raw_headers(1, [(":status", "2x0"),
                              ("content-type", DNS_MESSAGE)], end=True)
    ex.cut()
    s["status-garbage"] = ex.seed()

    ex = exchange()
    ex.respond(1, ctype="text/plain")
    ex.cut()
    s["wrong-content-type"] = ex.seed()

    ex = exchange()
    ex.respond(1, ctype="application/dns-messagex")
    ex.cut()
    s["content-type-prefix"] = ex.seed()

    ex = exchange()
    ex.respond(1, ctype=None)
    ex.cut()
    s["no-content-type"] = ex.seed()

    ex = exchange()
    ex.respond(1, body=b"")
    ex.cut()
    s["empty-body"] = ex.seed()

    ex = exchange()
    ex.respond(1, body=answer(1))
    ex.cut()
    s["answer-to-other-question"] = ex.seed()

    ex = exchange()
    ex.respond(1, body=answer(0, qr=False))
    ex.cut()
    s["answer-not-a-response"] = ex.seed()

    ex = exchange()
    ex.respond(1, body=answer(0)[:11])
    ex.cut()
    s["answer-short"] = ex.seed()

    ex = exchange()
    ex.respond(1, extra=[("x-big", "v" * 20000)])
    ex.cut()
    s["huge-header-continuation"] = ex.seed()

    ex = exchange()
    ex.respond(1, extra=[("x-h%d" % i, "%d" % i) for i in range(300)])
    ex.cut()
    s["many-headers"] = ex.seed()

    # A body longer than any DNS message: stubborn resets the stream.
    ex = exchange()
    big = answer(0) + bytes(70000)
    ex.server.send_headers(1, [(":status", "200"),
                               ("content-type", DNS_MESSAGE)])
    data = ex.server.data_to_send()
    ex.out += data
    ex.to_client(data)
    for i in range(0, len(big), 16384):
        ex.server.send_data(1, big[i:i + 16384],
                            end_stream=i + 16384 >= len(big))
        data = ex.server.data_to_send()
        ex.out += data
        ex.to_client(data)
    ex.cut()
    s["oversized-data"] = ex.seed()

    ex = exchange()
    ex.respond(1, body=answer(0) + bytes(30), clen="20")
    ex.cut()
    s["content-length-body-mismatch"] = ex.seed()

    # Idle: PINGs answered three times, then the idle close.
    ex = exchange()
    ex.respond(1)
    ex.cut(TIMER)
    for _ in range(3):
        ex.ping(ack=True)
        ex.cut(TIMER)
    s["idle-pings-then-close"] = ex.seed()

    ex = exchange()
    ex.respond(1)
    ex.cut(TIMER)
    ex.cut(TIMER)
    s["idle-ping-unanswered"] = ex.seed()

    ex = exchange()
    ex.ping()
    ex.respond(1)
    ex.cut()
    s["server-ping"] = ex.seed()

    # The resolver gives up on stream 1; its late answer is dropped.
    ex = exchange(queries=2)
    ex.cut(TIMEOUT)
    ex.respond(1)
    ex.respond(3)
    ex.cut()
    s["timeout-then-late-answer"] = ex.seed()

    # One more query once READY.
    ex = exchange()
    ex.respond(1)
    ex.cut(SEND)
    sid = ex.request()
    ex.respond(sid)
    ex.cut()
    s["send-while-ready"] = ex.seed()

    ex = exchange(queries=3)
    ex.respond(3)
    ex.cut(EOF)
    s["eof-busy"] = ex.seed()

    ex = exchange()
    ex.respond(1)
    ex.cut(EOF)
    s["eof-idle"] = ex.seed()

    # At most one stream: the next query waits inside nghttp2 until
    # stream 1 closes.
    ex = exchange(settings={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    ex.cut(SEND)
    ex.respond(1)
    ex.cut()
    sid = ex.request(1)
    ex.respond(sid)
    ex.cut()
    s["concurrency-one"] = ex.seed()

    # ...and the read that closes stream 1 ends the session with a
    # protocol error: sending the GOAWAY, nghttp2 refuses the waiting
    # stream 3, the query goes again at once on the same connection, and
    # the session used to be freed inside nghttp2_session_mem_send.
    ex = exchange(settings={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    ex.cut(SEND)
    ex.respond(1)
    ex.add(frame(0, 0, 0, b"x"))
    ex.cut()
    s["concurrency-one-then-protocol-error"] = ex.seed()

    ex = exchange()
    ex.add(frame(0, 0, 0, b"x"))
    ex.cut()
    s["data-on-stream-0"] = ex.seed()

    ex = exchange()
    ex.add(raw(hf.PushPromiseFrame(1, promised_stream_id=2,
                                   data=literal_block([
                                       (":method", "GET"),
                                       (":scheme", "https"),
                                       (":authority", "dns.test"),
                                       (":path", "/x")]),
                                   flags=["END_HEADERS"])))
    ex.cut()
    s["push-promise"] = ex.seed()

    ex = exchange()
    ex.add(raw(hf.WindowUpdateFrame(0, window_increment=0x7fffffff)))
    ex.cut()
    s["window-overflow"] = ex.seed()

    ex = exchange()
    ex.add(raw(hf.WindowUpdateFrame(0, window_increment=1000)))
    ex.add(raw(hf.PriorityFrame(1, depends_on=0, stream_weight=200)))
    ex.add(frame(0xfa, 0, 0, b"unknown"))
    ex.add(raw(hf.AltSvcFrame(0, origin=b"dns.test", field=b'h2=":8443"')))
    ex.respond(1)
    ex.cut()
    s["window-priority-unknown"] = ex.seed()

    ex = exchange(settings={
        h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 100})
    ex.respond(1)
    ex.cut()
    s["settings-odd"] = ex.seed()

    # A send window of one byte: the next query's body goes out a byte
    # at a time, as WINDOW_UPDATEs come.
    ex = exchange()
    ex.add(frame(4, 0, 0, struct.pack(">HI", 4, 1)))
    ex.cut(SEND)
    sid = ex.request()
    for _ in range(3):
        ex.add(raw(hf.WindowUpdateFrame(sid, window_increment=1)))
        ex.cut()
    ex.add(raw(hf.WindowUpdateFrame(sid, window_increment=100)))
    ex.respond(1)
    ex.cut()
    ex.respond(sid)
    ex.cut()
    s["settings-window-one"] = ex.seed()

    # No server preface: an HTTP/1.1 answer.
    s["http1-answer"] = bytes([0, 0]) + (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    # fuzz_doh's own SETTINGS, then a stream answered by raw frames.
    s["setup-settings-raw"] = bytes([4, 0]) + raw_headers(
        1, [(":status", "200"), ("content-type", DNS_MESSAGE)]) + raw(
        hf.DataFrame(1, data=answer(0), flags=["END_STREAM"]))
    return s


def raw_headers(sid, headers, end=False):
    flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
    return raw(hf.HeadersFrame(sid, data=literal_block(headers),
                               flags=flags))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fuzz_doh.in")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print("%-40s %6d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
