"""Losing upstreams: a dead one is skipped, and when none is usable the
client is told SERVFAIL promptly instead of waiting out its own timeout."""

import threading
import time

import dns.exception
import dns.rcode
import pytest

import clients
import servers


def test_upstream_killed_mid_run(upstream, stubborn):
    first, second = upstream("first"), upstream("second")
    s = stubborn([first.spec(), second.spec()])

    results = []          # (started after the kill?, rcode or exception, answers)
    killed = threading.Event()
    stop = threading.Event()

    def client():
        i = 0
        while not stop.is_set() and i < 400:
            after = killed.is_set()
            tag = f"flow{i}"
            try:
                q, r = clients.ask(s.port, servers.who_name(tag), "TXT", tcp=bool(i % 2))
                results.append((after, r.rcode(), clients.answer_strings(r, "TXT")))
            except (dns.exception.DNSException, OSError) as e:
                results.append((after, e, []))
            i += 1

    t = threading.Thread(target=client)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while len(results) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.kill()
        killed.set()
        deadline = time.monotonic() + 10
        n_at_kill = len(results)
        while len(results) < n_at_kill + 30 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(timeout=30)

    before = [r for r in results if not r[0]]
    after = [r for r in results if r[0]]
    assert any(ans == ["first"] for _, _, ans in before), before[:5]
    # A query caught in flight by the kill may be answered either way, but
    # it must be answered, not left to time out.
    timed_out = [r for r in results if isinstance(r[1], Exception)]
    assert not timed_out, timed_out
    assert len(after) >= 30, f"only {len(after)} queries completed after the kill"
    wrong = [r for r in after if r[1] != dns.rcode.NOERROR or r[2] != ["second"]]
    assert not wrong, wrong[:5]

    # Plain data still flows, over both transports.
    for tcp in (False, True):
        q, r = clients.ask(s.port, servers.zone_name(77), "AAAA", tcp=tcp)
        assert clients.answer_strings(r, "AAAA") == [servers.zone_aaaa(77)]


def test_silent_upstream_is_skipped_within_client_timeout(silent_upstream, upstream, stubborn):
    # A first upstream that accepts the connection and then says nothing
    # must cost a deadline, not the client's whole timeout.
    s = stubborn([silent_upstream("first"), upstream("second").spec()])
    for i in range(3):
        t0 = time.monotonic()
        q, r = clients.ask(s.port, servers.who_name(f"silent{i}"), "TXT",
                           tcp=bool(i % 2), timeout=5.0)
        elapsed = time.monotonic() - t0
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "TXT") == ["second"]
        assert elapsed < 4.0, f"answer took {elapsed:.2f}s"


REASON = {"rogue": "pin", "untrusted": "chain", "wrongname": "hostname"}

ALL_BAD = [
    pytest.param(("rogue", "rogue"), id="both-rogue"),
    pytest.param(("rogue", "closed"), id="rogue-and-closed-port"),
    pytest.param(("closed", "closed"), id="both-closed-ports"),
    pytest.param(("untrusted", "wrongname"), id="untrusted-and-wrongname"),
    pytest.param(("rogue", "silent"), id="rogue-and-silent"),
]


@pytest.mark.parametrize("kinds", ALL_BAD)
def test_all_upstreams_bad_gives_prompt_servfail(upstream, closed_upstream, silent_upstream,
                                                 stubborn, certs, kinds):
    pins = [certs["good"].pin]
    specs, bad_servers = [], []
    for n, kind in enumerate(kinds):
        name = ("first", "second")[n]
        if kind == "closed":
            specs.append(closed_upstream(name, pins=tuple(pins)))
        elif kind == "silent":
            specs.append(silent_upstream(name, pins=tuple(pins)))
        else:
            u = upstream(name, kind)
            bad_servers.append(u)
            specs.append(u.spec(pins=pins))
    s = stubborn(specs)

    # Twice: the first time the handshakes fail, the second time the
    # upstreams are already quarantined or known down; both must be fast.
    for attempt in range(2):
        for tcp in (False, True):
            t0 = time.monotonic()
            q, r = clients.ask(s.port, servers.zone_name(attempt * 2 + tcp), "A",
                               tcp=tcp, timeout=5.0)
            elapsed = time.monotonic() - t0
            assert r.id == q.id
            assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
            assert r.answer == []
            assert elapsed < 4.0, f"SERVFAIL took {elapsed:.2f}s"

    for u in bad_servers:
        assert u.queries_seen() == 0, (u.name, u.queries())
    # Every certificate failure is a trust incident, the last upstream's too.
    reasons = {i.get("upstream"): i.get("reason") for i in s.incidents()}
    for u in bad_servers:
        assert reasons.get(u.name) == REASON[u.cert.name], (u.name, s.incidents())
    assert s.alive()
