"""Losing upstreams: a dead one is skipped, and when none is usable the
client is told SERVFAIL promptly instead of waiting out its own timeout."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.message
import dns.rcode
import dns.rrset
import pytest

import clients
import hostile as hostile_mod
import servers
import slow


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
    # A silent upstream is waited for until the deadline (it could still
    # answer, with nothing else left to ask): SERVFAIL comes within 4 s.
    limit = 4.0 if "silent" in kinds else 2.5
    for attempt in range(2):
        for tcp in (False, True):
            t0 = time.monotonic()
            q, r = clients.ask(s.port, servers.zone_name(attempt * 2 + tcp), "A",
                               tcp=tcp, timeout=5.0)
            elapsed = time.monotonic() - t0
            assert r.id == q.id
            assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
            assert r.answer == []
            assert elapsed < limit, f"SERVFAIL took {elapsed:.2f}s"

    for u in bad_servers:
        assert u.queries_seen() == 0, (u.name, u.queries())
    # Every certificate failure is a trust incident, the last upstream's too.
    reasons = {i.get("upstream"): i.get("reason") for i in s.incidents()}
    for u in bad_servers:
        assert reasons.get(u.name) == REASON[u.cert.name], (u.name, s.incidents())
    assert s.alive()


# --- slow upstreams: an answer past the attempt time still counts ---------

SLOW = 2.0      # past the 1.5 s attempt, well inside the 4 s deadline


def test_slow_upstream_alone_is_waited_for(hostile, stubborn):
    # With nobody else to ask, an upstream past its 1.5 s keeps its query
    # until the deadline: its answer beats a SERVFAIL at 1.5 s.
    h = hostile(slow.Delayed(SLOW, hostile_mod.correct))
    s = stubborn([h.spec()])
    for i, tcp in enumerate((False, True)):
        t0 = time.monotonic()
        q, r = clients.ask(s.port, f"slow{i}.hostile.test", "A", tcp=tcp, timeout=5.0)
        elapsed = time.monotonic() - t0
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "A") == [hostile_mod.DEFAULT_DATA["A"]]
        assert SLOW - 0.1 < elapsed < 3.5, f"answer took {elapsed:.2f}s"
    assert [q[2] for q in h.queries()] == ["slow0.hostile.test.", "slow1.hostile.test."]
    assert s.alive()


def test_slow_first_upstream_still_answers_while_the_next_is_asked(hostile, silent_upstream,
                                                                   stubborn):
    # The second upstream is asked at 1.5 s, and never answers; the first
    # keeps its query, and its answer at 2 s is the one the client gets.
    h = hostile(slow.Delayed(SLOW, hostile_mod.correct))
    s = stubborn([h.spec(), silent_upstream("second")])
    t0 = time.monotonic()
    q, r = clients.ask(s.port, "late.hostile.test", "A", timeout=5.0)
    elapsed = time.monotonic() - t0
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert clients.answer_strings(r, "A") == [hostile_mod.DEFAULT_DATA["A"]]
    assert elapsed < 3.5, f"answer took {elapsed:.2f}s"
    assert s.alive()


def test_upstream_silent_after_its_handshake_backs_off(hostile, upstream, stubborn):
    # A handshake proves nothing: only an answer ends the backoff.  An
    # upstream that connects, then never answers, is marked down again by
    # the first query that times out after each handshake, for twice as
    # long each time, rather than taking three queries' time every second.
    h = hostile(hostile_mod.Script())
    s = stubborn([h.spec(), upstream("second").spec()])
    pat = re.compile(r"upstream hostile: down \(queries time out\); retry in (\d+) s")
    downs, i = [], 0
    deadline = time.monotonic() + 20.0
    while len(downs) < 3 and time.monotonic() < deadline:
        q, r = clients.ask(s.port, servers.who_name(f"mute{i}"), "TXT", timeout=5.0)
        assert clients.answer_strings(r, "TXT") == ["second"]
        i += 1
        time.sleep(0.1)
        downs = pat.findall(s.log_text())
    assert downs[:3] == ["1", "2", "4"], s.log_text()
    # Three queries to mark it down the first time, then one per probe.
    assert len(h.queries()) == 5, h.queries()
    assert s.alive()


def test_with_every_upstream_down_the_backoff_holds_at_most_5_s(hostile, stubborn):
    # The only upstream connects, then never answers.  Once it is down,
    # queries get SERVFAIL at once until its backoff is over, rather than
    # a handshake and a 1.5 s wait each; and while no upstream is up that
    # backoff is 5 s at most, so answers come back soon after it does.
    h = hostile(hostile_mod.Script())
    s = stubborn([h.spec()])
    t0 = time.monotonic()
    # Three at once: down after one attempt's time, not three.
    with ThreadPoolExecutor(3) as pool:
        first = list(pool.map(lambda i: clients.ask(s.port, servers.who_name(f"all{i}"), "TXT",
                                                    timeout=5.0)[1], range(3)))
    assert [r.rcode() for r in first] == [dns.rcode.SERVFAIL] * 3
    prompt, i = 0, 3
    capped = re.compile(r"upstream hostile: down \(queries time out\); retry in 8 s, "
                        r"or in 5 s while no upstream is up")
    seen_capped = None
    while time.monotonic() - t0 < 21.0:
        t = time.monotonic()
        q, r = clients.ask(s.port, servers.who_name(f"all{i}"), "TXT", timeout=5.0)
        i += 1
        assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
        if time.monotonic() - t < 0.3:
            prompt += 1
        if seen_capped is None and capped.search(s.log_text()):
            seen_capped = (time.monotonic(), h.connections)
        if seen_capped is not None and h.connections > seen_capped[1]:
            break
        time.sleep(0.1)
    log = s.log_text()
    downs = re.findall(r"upstream hostile: down \(queries time out\); retry in (\d+) s", log)
    assert downs[:4] == ["1", "2", "4", "8"], log
    assert seen_capped is not None, log
    # The fifth connection came about 5 s after the fourth went down, not 8.
    retried = time.monotonic() - seen_capped[0]
    assert h.connections == 5, (h.connections, log)
    assert retried < 7.0, retried
    # Between the attempts, clients were answered at once.
    assert prompt >= 20, (prompt, i)
    assert s.alive()


# --- SERVFAIL and REFUSED from an upstream ---------------------------------

def refused(query):
    r = dns.message.make_response(query)
    r.set_rcode(dns.rcode.REFUSED)
    return r.to_wire()


@pytest.mark.parametrize("make", [slow.servfail, refused], ids=["servfail", "refused"])
def test_upstream_failure_rcode_is_asked_of_the_next_upstream(hostile, upstream, stubborn,
                                                               make):
    # SERVFAIL or REFUSED is that upstream's trouble, not necessarily the
    # name's: the next upstream answers, at once.
    h = hostile(slow.Answer(make))
    s = stubborn([h.spec(), upstream("second").spec()])
    for i, tcp in enumerate((False, True)):
        t0 = time.monotonic()
        q, r = clients.ask(s.port, servers.who_name(f"rc{i}"), "TXT", tcp=tcp, timeout=5.0)
        elapsed = time.monotonic() - t0
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "TXT") == ["second"]
        assert elapsed < 1.0, f"answer took {elapsed:.2f}s"
    assert len(h.queries()) == 2
    assert s.alive()


def test_servfail_from_every_upstream_is_passed_on(hostile, stubborn):
    # Each upstream asked once, then the last one's SERVFAIL is the answer,
    # not a wait for the deadline.
    first = hostile(slow.Answer(slow.servfail), name="first")
    second = hostile(slow.Answer(slow.servfail), name="second")
    s = stubborn([first.spec(), second.spec()])
    t0 = time.monotonic()
    q, r = clients.ask(s.port, "bogus.hostile.test", "A", timeout=5.0)
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    assert time.monotonic() - t0 < 1.0
    assert len(first.queries()) == 1 and len(second.queries()) == 1
    # SERVFAIL says the upstream is alive: it stays first in line.
    q, r = clients.ask(s.port, "bogus2.hostile.test", "A", timeout=5.0)
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    assert len(first.queries()) == 2
    assert s.alive()


def test_servfail_waits_for_an_upstream_still_asked(hostile, stubborn):
    # The first upstream is slow and then fails; the second, asked at
    # 1.5 s, answers after that SERVFAIL: its answer is the client's.
    first = hostile(slow.Delayed(2.0, slow.servfail), name="first")
    second = hostile(slow.Delayed(1.0, hostile_mod.correct), name="second")
    s = stubborn([first.spec(), second.spec()])
    t0 = time.monotonic()
    q, r = clients.ask(s.port, "late.hostile.test", "A", timeout=5.0)
    elapsed = time.monotonic() - t0
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert clients.answer_strings(r, "A") == [hostile_mod.DEFAULT_DATA["A"]]
    assert 2.2 < elapsed < 3.5, f"answer took {elapsed:.2f}s"
    assert len(first.queries()) == 1 and len(second.queries()) == 1
    assert s.alive()


def test_stale_answer_beats_a_servfail(hostile, stubborn):
    # RFC 8767: an upstream that cannot refresh an answer (here by
    # SERVFAIL) lets serve-stale serve the expired one.
    asked = []

    def make(query):
        asked.append(query.question[0].name)
        if len(asked) > 1:
            return slow.servfail(query)
        r = dns.message.make_response(query)
        r.answer.append(dns.rrset.from_text(query.question[0].name, 1, "IN", "A",
                                            hostile_mod.DEFAULT_DATA["A"]))
        return r.to_wire()

    h = hostile(slow.Answer(make))
    s = stubborn([h.spec()], cache_extra=["serve-stale = 60"])
    q, r = clients.ask(s.port, "brief.hostile.test", "A", timeout=5.0)
    t0 = time.monotonic()
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    # Its one second is over, with room for whole-second rounding.
    time.sleep(2.5)
    q, r = clients.ask(s.port, "brief.hostile.test", "A", timeout=5.0)
    assert time.monotonic() - t0 < 2.5 + 1.0
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert clients.answer_strings(r, "A") == [hostile_mod.DEFAULT_DATA["A"]]
    assert r.answer[0].ttl == 30, r.answer[0].ttl
    assert len(asked) == 2, asked
    assert s.alive()


def test_upstream_that_refuses_everything_is_marked_down(hostile, upstream, stubborn):
    h = hostile(slow.Answer(refused))
    s = stubborn([h.spec(), upstream("second").spec()])
    for i in range(6):
        q, r = clients.ask(s.port, servers.who_name(f"acl{i}"), "TXT", timeout=5.0)
        assert clients.answer_strings(r, "TXT") == ["second"]
    assert re.search(r"upstream hostile: down \(answers fail: REFUSED\)", s.log_text())
    assert len(h.queries()) <= 4, h.queries()
    # Alone, a refusing upstream gives the client SERVFAIL: stubborn does
    # not refuse its own client.
    s2 = stubborn([h.spec()])
    q, r = clients.ask(s2.port, "alone.hostile.test", "A", timeout=5.0)
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)


class HangUpAfter(hostile_mod.Script):
    """Take the query, say nothing, hang up `delay` seconds later."""

    def __init__(self, delay):
        self.delay = delay

    def on_query(self, conn, query):
        conn.state["t"] = time.monotonic()

    def on_idle(self, conn):
        if "t" in conn.state and time.monotonic() - conn.state["t"] > self.delay:
            conn.close()


def test_upstream_that_had_its_time_is_not_asked_again_before_an_unasked_one(
        hostile, silent_upstream, upstream, stubborn):
    # The first upstream times out, keeps the query, then loses its
    # connection: it had its 1.5 s, so when the second times out too the
    # third is asked, not the first again.
    h = hostile(HangUpAfter(1.7))
    s = stubborn([h.spec(), silent_upstream("second"), upstream("third").spec()])
    t0 = time.monotonic()
    q, r = clients.ask(s.port, servers.who_name("turns"), "TXT", timeout=5.0)
    elapsed = time.monotonic() - t0
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    assert clients.answer_strings(r, "TXT") == ["third"]
    assert elapsed < 3.6, f"answer took {elapsed:.2f}s"
    assert len(h.queries()) == 1, h.queries()
    assert s.alive()
