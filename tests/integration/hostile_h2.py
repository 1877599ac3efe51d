"""A DoH upstream that misbehaves on purpose: HTTP/2 (python3-h2) over TLS
with a certificate stubborn trusts, so what it does reaches stubborn's
stream handling rather than its trust gate.  Per request a script decides:
answer, answer with the wrong status, type or size, reset the stream, send
GOAWAY, hang up.  The server records every request, every stream the client
reset and every byte that arrived, which is what the tests assert on.

With another certificate it stands for a refused server (no request may
reach it), and offering only http/1.1 in ALPN it stands for a server that
does not speak HTTP/2 (stubborn must hang up without writing a byte)."""

import socket
import ssl
import threading
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

import hostile
import pki
import servers

# Same bounds as the DoT hostile server: none matters to a passing test,
# all of them keep a test gone wrong from leaving a thread behind.
LIFETIME = hostile.LIFETIME
MAX_CONNECTIONS = hostile.MAX_CONNECTIONS
MAX_REQUESTS = 4096         # per connection
HANDSHAKE_TIMEOUT = hostile.HANDSHAKE_TIMEOUT
TICK = hostile.TICK
JOIN_TIMEOUT = hostile.JOIN_TIMEOUT

DNS_MESSAGE = "application/dns-message"


@dataclass
class Request:
    """One complete request (headers and body) as the server received it."""
    conn: int
    stream_id: int
    headers: list           # (name, value) in the order sent
    body: bytes
    query: object           # dns.message.Message, None when unparsable
    at: float               # time.monotonic() when it was complete

    def header(self, name):
        values = [v for k, v in self.headers if k == name]
        return values[0] if len(values) == 1 else values or None

    @property
    def qname(self):
        return self.query.question[0].name.to_text() if self.query else None

    @property
    def qtype(self):
        return dns.rdatatype.to_text(self.query.question[0].rdtype) if self.query else None


class Conn:
    """One HTTP/2 connection, as a script drives it."""

    def __init__(self, server, index, sock):
        self.server = server
        self.index = index
        self.sock = sock
        self.state = {}
        self.closed = False
        self.open_streams = set()
        # Response bodies waiting for the client's flow-control window.
        self._pending = {}
        # Unvalidated: scripts send what a well-behaved server would not
        # (two :status fields, pseudo-headers in trailers).
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                           validate_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        if server.max_streams is not None:
            # Before initiate_connection, so the first SETTINGS carries it.
            self.h2.local_settings = h2.settings.Settings(
                client=False,
                initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                                server.max_streams})

    def respond(self, req, body, status=200, content_type=DNS_MESSAGE, end_stream=True):
        """HEADERS, then the body in DATA frames as the client's window
        allows.  content_type None sends no content-type at all; without
        end_stream the stream stays open after the body, so that only the
        client can end it (with RST_STREAM, which the server then sees)."""
        headers = [(":status", str(status))]
        if content_type is not None:
            headers.append(("content-type", content_type))
        headers.append(("content-length", str(len(body))))
        self.h2.send_headers(req.stream_id, headers, end_stream=end_stream and not body)
        if body:
            self._pending[req.stream_id] = (bytearray(body), end_stream)
            self._pump()
        elif end_stream:
            self.open_streams.discard(req.stream_id)
        self.flush()
        self.server.log(f"conn {self.index}: stream {req.stream_id}: {status} "
                        f"{content_type}, {len(body)} bytes")

    def answer(self, req, data=None):
        self.respond(req, hostile.correct(req.query, data))

    def reset(self, req, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR):
        self.h2.reset_stream(req.stream_id, error_code)
        self._pending.pop(req.stream_id, None)
        self.open_streams.discard(req.stream_id)
        self.flush()
        self.server.log(f"conn {self.index}: stream {req.stream_id}: reset "
                        f"({error_code!r})")

    def goaway(self, last_stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR):
        """A GOAWAY written past h2's state machine, which would allow
        nothing after it: the drain tests answer streams afterwards."""
        self.flush()
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
        self.sock.sendall(frame.serialize())
        self.server.log(f"conn {self.index}: GOAWAY last_stream_id={last_stream_id}")

    def close(self):
        """Hang up once the current event is handled: TCP FIN, with no
        GOAWAY and no TLS close_notify, as a crashing server would."""
        self.closed = True

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pump(self):
        for sid in list(self._pending):
            buf, end_stream = self._pending[sid]
            try:
                while buf:
                    n = min(len(buf), self.h2.local_flow_control_window(sid),
                            self.h2.max_outbound_frame_size)
                    if n <= 0:
                        break
                    self.h2.send_data(sid, bytes(buf[:n]),
                                      end_stream=end_stream and n == len(buf))
                    del buf[:n]
            except h2.exceptions.StreamClosedError:
                buf.clear()     # the client reset it meanwhile
                end_stream = True
            if not buf:
                del self._pending[sid]
                if end_stream:
                    self.open_streams.discard(sid)


class HostileDoh(hostile.ThreadedServer):
    """The server.  `script` is any object with on_request(conn, req), called
    for each complete request, and on_idle(conn), called when a connection
    has been quiet for TICK; both run in that connection's thread, so
    per-connection state needs no lock on conn.state.  max_streams is the
    SETTINGS_MAX_CONCURRENT_STREAMS it announces (h2's 100 by default)."""

    kind = "hostile-h2"

    def __init__(self, name, address, cert, script, alpn=("h2",), max_streams=None):
        self.name = name
        self.address = address
        self.cert = cert
        self.script = script
        self.alpn = list(alpn)
        self.max_streams = max_streams
        self.port = servers.free_port([address])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lines = []
        self._requests = []
        self._resets = []           # (conn, stream id, error code, time) from the client
        self._threads = []
        self._listener = None
        self.connections = 0        # accepted TCP connections
        self.handshakes = 0         # completed TLS handshakes
        self.negotiated = []        # ALPN result of each handshake
        self.handshake_times = []   # time.monotonic() of each
        self.bytes_in = {}          # conn -> bytes received after the handshake
        self.pings = 0
        self.max_open = 0           # most client streams open at once
        self.errors = []            # HTTP/2 protocol errors the client made
        self._finished = set()      # connections this server is done with

    def spec(self, pins=(), path="/dns-query"):
        return servers.UpstreamSpec(self.name, self.address, self.port, pki.HOSTNAME,
                                    tuple(pins), scheme="https", path=path)

    def requests(self):
        with self._lock:
            return list(self._requests)

    def resets(self):
        """(conn, stream id, error code, time.monotonic() when received) of
        each RST_STREAM the client sent."""
        with self._lock:
            return list(self._resets)

    def all_closed(self):
        """Whether there was a connection and every one has ended, so that
        bytes_in holds all the client will ever have sent."""
        with self._lock:
            return self.connections > 0 and len(self._finished) == self.connections

    def start(self):
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(self.cert.chain_pem), str(self.cert.key_pem))
        self._ctx.set_alpn_protocols(self.alpn)
        # Listening before start() returns, so no readiness probe (which
        # would count as a connection) is needed.
        self._listen()
        self.log(f"listening on {self.address}:{self.port}, ALPN {self.alpn}")
        return self

    def _refused(self, index):
        with self._lock:
            self._finished.add(index)

    def _serve(self, raw, index, deadline):
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls = self._ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError) as e:
                self.log(f"conn {index}: handshake failed: {e}")
                return
            alpn = tls.selected_alpn_protocol()
            with self._lock:
                self.handshakes += 1
                self.negotiated.append(alpn)
                self.handshake_times.append(time.monotonic())
                self.bytes_in[index] = 0
            self.log(f"conn {index}: handshake done, ALPN {alpn}")
            with tls:
                if alpn == "h2":
                    self._h2(Conn(self, index, tls), deadline)
                else:
                    self._listen_only(tls, index, deadline)
        except Exception as e:  # anything else is the fixture's bug: say so
            self.log(f"conn {index}: server error: {e!r}")
        finally:
            raw.close()
            with self._lock:
                self._finished.add(index)

    def _recv(self, sock, index):
        """Bytes, b"" at EOF, None on a quiet tick; raises on errors."""
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return None
        except ssl.SSLZeroReturnError:
            data = b""
        if data:
            with self._lock:
                self.bytes_in[index] += len(data)
        return data

    def _listen_only(self, sock, index, deadline):
        # Without HTTP/2 there is nothing this server would understand:
        # it only counts what the client sends before hanging up.
        sock.settimeout(TICK)
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = self._recv(sock, index)
            except (OSError, ssl.SSLError) as e:
                self.log(f"conn {index}: recv: {e}")
                return
            if data == b"":
                self.log(f"conn {index}: closed by peer after "
                         f"{self.bytes_in[index]} bytes")
                return
            if data:
                self.log(f"conn {index}: {len(data)} bytes without HTTP/2: {data[:40]!r}")

    def _h2(self, conn, deadline):
        sock = conn.sock
        sock.settimeout(TICK)
        conn.h2.initiate_connection()
        conn.flush()
        partial = {}            # stream id -> (headers, body so far)
        nrequests = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = self._recv(sock, conn.index)
            except (OSError, ssl.SSLError) as e:
                self.log(f"conn {conn.index}: recv: {e}")
                return
            if data is None:
                self.script.on_idle(conn)
                conn.flush()
                if conn.closed:
                    break
                continue
            if not data:
                self.log(f"conn {conn.index}: closed by peer")
                return
            try:
                events = conn.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                with self._lock:
                    self.errors.append((conn.index, repr(e)))
                self.log(f"conn {conn.index}: client broke HTTP/2: {e!r}")
                conn.flush()
                break
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    partial[ev.stream_id] = (list(ev.headers), bytearray())
                    conn.open_streams.add(ev.stream_id)
                    with self._lock:
                        self.max_open = max(self.max_open, len(conn.open_streams))
                elif isinstance(ev, h2.events.DataReceived):
                    if ev.stream_id in partial:
                        partial[ev.stream_id][1].extend(ev.data)
                    conn.h2.acknowledge_received_data(ev.flow_controlled_length,
                                                      ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    if ev.stream_id not in partial:
                        continue
                    headers, body = partial.pop(ev.stream_id)
                    nrequests += 1
                    if nrequests > MAX_REQUESTS:
                        self.log(f"conn {conn.index}: over {MAX_REQUESTS} requests")
                        conn.close()
                        break
                    self._request(conn, ev.stream_id, headers, bytes(body))
                elif isinstance(ev, h2.events.StreamReset):
                    partial.pop(ev.stream_id, None)
                    conn._pending.pop(ev.stream_id, None)
                    conn.open_streams.discard(ev.stream_id)
                    with self._lock:
                        self._resets.append((conn.index, ev.stream_id, ev.error_code,
                                             time.monotonic()))
                    self.log(f"conn {conn.index}: stream {ev.stream_id} reset by "
                             f"client ({ev.error_code!r})")
                elif isinstance(ev, h2.events.WindowUpdated):
                    conn._pump()
                elif isinstance(ev, h2.events.PingReceived):
                    # h2 acknowledges it by itself.
                    with self._lock:
                        self.pings += 1
                    self.log(f"conn {conn.index}: PING")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.log(f"conn {conn.index}: GOAWAY from client "
                             f"({ev.error_code!r})")
                if conn.closed:
                    break
            conn.flush()
            if conn.closed:
                break
        self.log(f"conn {conn.index}: hanging up")
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _request(self, conn, stream_id, headers, body):
        try:
            query = dns.message.from_wire(body)
            query.question[0]
        except (dns.exception.DNSException, IndexError) as e:
            self.log(f"conn {conn.index}: stream {stream_id}: unparsable body "
                     f"({len(body)} bytes): {e}")
            query = None
        req = Request(conn.index, stream_id, headers, body, query, time.monotonic())
        with self._lock:
            self._requests.append(req)
        self.log(f"conn {conn.index}: stream {stream_id}: {req.header(':method')} "
                 f"{req.header(':path')} id={query.id if query else None} "
                 f"{req.qname} {req.qtype}")
        if query is None:
            conn.respond(req, b"", status=400, content_type=None)
            return
        self.script.on_request(conn, req)
