"""Helpers for the fault-injection tests (test_faults.py): a process's
memory and open files, a TCP server that stalls a TLS handshake, hostile
DoT and DoH scripts that misbehave at the framing level (length prefixes,
dripped bytes, floods of frames that match nothing, huge header blocks,
DATA that never ends), malformed datagrams for a UDP flood, and a clock
moved under a running process with libfaketime.

Like the other hostile servers, everything here is bounded in count and
time, so a test gone wrong cannot leave a thread spinning or a socket
open."""

import functools
import os
import random
import re
import select
import socket
import threading
import time
from pathlib import Path

import dns.message
import dns.rdatatype

import hostile

# --- memory -----------------------------------------------------------------

def memory_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@functools.lru_cache(maxsize=None)
def sanitizer_build(binary):
    """Whether the binary was built with AddressSanitizer (configure
    --with-sanitizer): its runtime is linked in."""
    return b"__asan_init" in Path(binary).read_bytes()


def log_lines(stubborn_proc, pattern):
    """The lines of stubborn's log that match a regular expression."""
    pat = re.compile(pattern)
    return [line for line in stubborn_proc.log_text().splitlines() if pat.search(line)]


# --- a TCP peer that never finishes a TLS handshake ----------------------------

# Bounds, as in hostile.py: none matters to a passing test.
STALL_LIFETIME = 60.0
STALL_MAX_CONNECTIONS = 64
STALL_TICK = 0.1
STALL_JOIN_TIMEOUT = 5.0


def partial_server_hello():
    """The first bytes of a TLS 1.2-framed handshake record holding a
    ServerHello: the record header promises 90 bytes, the handshake header
    86, and only the version and part of the random follow."""
    return (b"\x16\x03\x03\x00\x5a"           # handshake record, 90 bytes
            b"\x02\x00\x00\x56"                # ServerHello, 86 bytes
            b"\x03\x03" + os.urandom(12))      # legacy_version, 12 of 32 random


class StallServer(hostile.LineLog):
    """Accepts TCP on a loopback address; once the client has spoken (its
    ClientHello), sends `greeting` (may be empty) and then nothing, ever,
    while holding the connection open.  Records what it saw."""

    def __init__(self, name, address, port, greeting=b""):
        self.name = name
        self.address = address
        self.port = port
        self.greeting = greeting
        self.connections = 0
        self.bytes_in = 0
        self._lines = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._listener = None

    def start(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.address, self.port))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"stall-{self.name}")
        self._thread.start()
        return self

    def _run(self):
        # One thread, select() over the listener and every connection.
        conns = {}          # socket -> [index, greeted]
        deadline = time.monotonic() + STALL_LIFETIME
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                ready, _, _ = select.select([self._listener] + list(conns), [], [],
                                            STALL_TICK)
                for sock in ready:
                    if sock is self._listener:
                        try:
                            raw, peer = self._listener.accept()
                        except OSError:
                            continue
                        self.connections += 1
                        if self.connections > STALL_MAX_CONNECTIONS:
                            raw.close()
                            continue
                        raw.setblocking(False)
                        conns[raw] = [self.connections, False]
                        self.log(f"conn {self.connections}: accepted from {peer}")
                        continue
                    index, greeted = conns[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError as e:
                        data = b""
                        self.log(f"conn {index}: recv: {e}")
                    if not data:
                        self.log(f"conn {index}: closed by peer")
                        del conns[sock]
                        sock.close()
                        continue
                    with self._lock:
                        self.bytes_in += len(data)
                    self.log(f"conn {index}: {len(data)} bytes")
                    if not greeted and self.greeting:
                        try:
                            sock.sendall(self.greeting)
                        except OSError:
                            pass
                        self.log(f"conn {index}: sent {len(self.greeting)} bytes, "
                                 f"stalling")
                    conns[sock][1] = True
        finally:
            for sock in conns:
                sock.close()

    def stop(self):
        self._stop.set()
        problems = []
        if self._thread is not None:
            self._thread.join(STALL_JOIN_TIMEOUT)
            if self._thread.is_alive():
                problems.append(f"stall server {self.name}: thread still running")
        if self._listener is not None:
            self._listener.close()
        return problems


# --- hostile DoT scripts -------------------------------------------------------

class PrefixThenStall(hostile.Script):
    """Answer the first query with raw bytes (a broken length prefix and
    whatever follows), then nothing more on that connection."""

    def __init__(self, raw):
        self.raw = raw

    def on_query(self, conn, query):
        if not conn.state.get("sent"):
            conn.state["sent"] = True
            conn.send(self.raw, raw=True)


class Slowloris(hostile.Script):
    """The correct reply, one byte every `interval` seconds: the reply to
    even a small query takes a minute to arrive."""

    def __init__(self, interval=1.0):
        self.interval = interval

    def on_query(self, conn, query):
        conn.state.setdefault("drip", bytearray()).extend(
            hostile.frame(hostile.correct(query)))
        self._drip(conn)

    def on_idle(self, conn):
        self._drip(conn)

    def _drip(self, conn):
        drip = conn.state.get("drip")
        now = time.monotonic()
        if drip and now - conn.state.get("last", 0.0) >= self.interval:
            conn.state["last"] = now
            conn.send(bytes(drip[:1]), raw=True)
            del drip[:1]


class WrongIds(hostile.Script):
    """Answer every query with `n` otherwise correct replies, none with
    the query's message ID."""

    def __init__(self, n):
        self.n = n

    def on_query(self, conn, query):
        replies = [hostile.reply(query, hostile.DEFAULT_DATA.get(
            dns.rdatatype.to_text(query.question[0].rdtype), None),
            msg_id=(query.id + k) & 0xFFFF) for k in range(1, self.n + 1)]
        conn.send(*replies)


class GarbageOnly(hostile.Script):
    """Answer every query with `n` well-framed messages of random bytes,
    then `tail` bytes of random data with no framing at all."""

    def __init__(self, n, tail):
        self.n = n
        self.tail = tail
        self.rng = random.Random(853)

    def on_query(self, conn, query):
        frames = [bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(12, 200)))
                  for _ in range(self.n)]
        conn.send(*frames)
        if self.tail:
            conn.send(os.urandom(self.tail), raw=True)


# --- hostile DoH scripts -------------------------------------------------------

class HugeHeaders:
    """Answer every request with `size` bytes of extra header fields
    (several fields, each well under HPACK's per-field limits, so the whole
    block spans HEADERS and CONTINUATION frames), then the right body."""

    def __init__(self, size=100_000, field=4000):
        self.headers = [(f"x-filler-{i:03d}", "f" * field)
                        for i in range(size // field)]

    def on_request(self, conn, req):
        body = hostile.correct(req.query)
        headers = [(":status", "200"), ("content-type", "application/dns-message"),
                   ("content-length", str(len(body)))] + self.headers
        conn.h2.send_headers(req.stream_id, headers)
        conn.h2.send_data(req.stream_id, body, end_stream=True)
        conn.flush()
        conn.server.log(f"conn {conn.index}: stream {req.stream_id}: "
                        f"{sum(len(k) + len(v) for k, v in headers)} bytes of headers")

    def on_idle(self, conn):
        pass


class EndlessData:
    """Answer every request with 200 and the right content-type, then DATA
    frames of filler on that stream for as long as the test lasts: past
    64 KiB, past RST_STREAM and past flow control, written as raw frames
    behind h2's back.  Bounded by `limit` bytes per connection; stops when
    the client hangs up."""

    CHUNK = 16384
    PER_TICK = 32               # frames written per call

    def __init__(self, limit=32 << 20):
        self.limit = limit
        self.sent = 0           # filler bytes, all connections

    def on_request(self, conn, req):
        conn.h2.send_headers(req.stream_id, [(":status", "200"),
                                             ("content-type", "application/dns-message")])
        conn.flush()
        conn.state.setdefault("streams", []).append(req.stream_id)
        conn.state.setdefault("sent", 0)
        self._pour(conn)

    def on_idle(self, conn):
        self._pour(conn)

    def _pour(self, conn):
        # Imported here, as hostile_h2 is: only the DoH tests need h2.
        from hyperframe.frame import DataFrame

        streams = conn.state.get("streams")
        if not streams or conn.closed:
            return
        payload = b"\0" * self.CHUNK
        try:
            for _ in range(self.PER_TICK):
                if conn.state["sent"] >= self.limit:
                    return
                sid = streams[-1]
                conn.sock.sendall(DataFrame(sid, data=payload).serialize())
                conn.state["sent"] += self.CHUNK
                self.sent += self.CHUNK
        except (OSError, ValueError) as e:
            conn.server.log(f"conn {conn.index}: writing DATA: {e!r}; hanging up")
            conn.close()


def _hpack_int(n, prefix_bits, first=0):
    """An HPACK integer (RFC 7541 5.1) with `first` in the prefix's spare
    high bits."""
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = [first | limit]
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def hpack_literal(name, value):
    """A literal header field without indexing, new name (RFC 7541
    6.2.2): it leaves the decoder's dynamic table alone, so the block can
    be written behind h2's encoder."""
    name, value = name.encode(), value.encode()
    return (b"\x00" + _hpack_int(len(name), 7) + name
            + _hpack_int(len(value), 7) + value)


class ContinuationFlood:
    """Answer every request with a HEADERS frame (:status 200 and the right
    content-type) without END_HEADERS, then CONTINUATION frames of filler
    fields that never end the block: a header block that grows for as long
    as the test lasts.  Raw frames behind h2's back; bounded by `limit`
    bytes per connection; stops when the client hangs up."""

    FRAME = 16000
    PER_TICK = 16

    def __init__(self, limit=16 << 20):
        self.limit = limit
        self.sent = 0
        field = hpack_literal("x-filler", "f" * 3000)
        self.payload = field * (self.FRAME // len(field))

    def on_request(self, conn, req):
        from hyperframe.frame import HeadersFrame

        if conn.state.get("stream"):
            return      # one open header block is all a connection can take
        # :status 200 is entry 8 of the static table; content-type is
        # name 31, written as a literal without indexing.
        ctype = b"application/dns-message"
        block = b"\x88" + _hpack_int(31, 4) + _hpack_int(len(ctype), 7) + ctype
        conn.flush()
        self._write(conn, HeadersFrame(req.stream_id, data=block).serialize())
        conn.state["stream"] = req.stream_id
        conn.state["sent"] = 0
        self._pour(conn)

    def on_idle(self, conn):
        self._pour(conn)

    def _write(self, conn, data):
        try:
            conn.sock.sendall(data)
            return True
        except (OSError, ValueError) as e:
            conn.server.log(f"conn {conn.index}: writing: {e!r}; hanging up")
            conn.close()
            return False

    def _pour(self, conn):
        from hyperframe.frame import ContinuationFrame

        sid = conn.state.get("stream")
        if not sid or conn.closed:
            return
        for _ in range(self.PER_TICK):
            if conn.state["sent"] >= self.limit:
                return
            if not self._write(conn, ContinuationFrame(sid, data=self.payload).serialize()):
                return
            conn.state["sent"] += len(self.payload)
            self.sent += len(self.payload)


# --- clients that misbehave ------------------------------------------------

def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid):
    """The soft RLIMIT_NOFILE of a running process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError(f"no open-file limit in /proc/{pid}/limits")


def metric(port, name, labels=""):
    """The value of one counter or gauge on stubborn's /metrics; labels as
    they are printed, e.g. 'protocol="udp"'."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    series = f"{name}{{{labels}}}" if labels else name
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    if m is None:
        raise AssertionError(f"{name} not on /metrics:\n{text}")
    return float(m.group(1))


def malformed_datagrams(count_each, seed=53):
    """Datagrams no resolver should answer or choke on, `count_each` of
    each kind: random bytes, headers cut short, responses (QR set) and
    queries claiming 65,535 questions."""
    rng = random.Random(seed)
    out = []
    for _ in range(count_each):
        out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512))))
        out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 11))))
        q = dns.message.make_query(f"r{rng.randint(0, 999)}.flood.test", "A")
        r = dns.message.make_response(q)
        out.append(r.to_wire())
        hdr = rng.getrandbits(16).to_bytes(2, "big") + b"\x01\x00\xff\xff\x00\x00\x00\x00\x00\x00"
        out.append(hdr + b"\x01a\x00\x00\x01\x00\x01" * rng.randint(0, 3))
    rng.shuffle(out)
    return out


# --- the clock ---------------------------------------------------------------

def libfaketime():
    """The path of Debian's libfaketime.so.1, or None."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


class FakeClock:
    """libfaketime driven through a timestamp file that it reads on every
    clock call (FAKETIME_NO_CACHE), so a test moves the clock of a running
    process by writing an offset such as "+1d" or "-1h".  env() is what
    the process must start with; with monotonic=False, CLOCK_MONOTONIC
    (and so libevent's timers and stubborn's cache ages) is left alone and
    only the wall clock moves, as an NTP step or a hand-set date does."""

    def __init__(self, path, monotonic=False):
        self.path = Path(path)
        self.monotonic = monotonic
        self.set("+0")

    def set(self, offset):
        # Written whole and renamed, so a reader never sees half a line.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.path)

    def env(self, lib):
        env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(self.path),
               "FAKETIME_NO_CACHE": "1"}
        if not self.monotonic:
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        return env


def open_idle_clients(address, port, count, batch=64, pause=0.01, timeout=20.0):
    """Open up to `count` TCP connections that never send a byte: `batch`
    non-blocking connects at a time, then a `pause` for the server to
    accept them (past its listen backlog the kernel drops SYNs, and a
    dropped SYN costs a 1 s retransmission).  Returns the connected
    sockets, which the caller must close.  Stops at `timeout` seconds."""
    import selectors

    socks = []
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    try:
        while len(socks) < count and time.monotonic() < deadline:
            pending = []
            for _ in range(min(batch, count - len(socks))):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((address, port))
                sel.register(sock, selectors.EVENT_WRITE)
                pending.append(sock)
            left = set(pending)
            while left and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    sock = key.fileobj
                    sel.unregister(sock)
                    left.discard(sock)
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        socks.append(sock)
                    else:
                        sock.close()
            for sock in left:
                sel.unregister(sock)
                sock.close()
            time.sleep(pause)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    finally:
        sel.close()
    return socks
