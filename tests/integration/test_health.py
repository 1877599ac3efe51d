"""Upstream health: `strategy = fastest` learns which upstream answers
sooner and prefers it, `strategy = order` (the default) keeps to the order
written however slow the first is, and with a state-dir a quarantine
outlives a restart, so a rogue upstream is not given a fresh chance to
misbehave every time stubborn starts."""

import re

import dns.rcode
import pytest

import clients
import hostile as hostile_mod
import servers
import slow

# Slow enough to tell apart from unbound on loopback even on a loaded
# machine, fast enough to be a working upstream (well within any timeout).
SLOW_DELAY = 0.25
WARMUP = 10
MEASURED = 10


def _who(port, tag):
    q, r = clients.ask(port, servers.who_name(tag), "TXT")
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, (tag, clients.rcode_text(r))
    answers = clients.answer_strings(r, "TXT")
    assert len(answers) == 1, answers
    return answers[0]


def _slow_and_fast(hostile, upstream):
    slow_up = hostile(slow.Delayed(SLOW_DELAY, slow.answer_for("slow")), name="slow")
    fast_up = upstream("fast")
    return slow_up, fast_up


def test_fastest_strategy_prefers_the_faster_upstream(hostile, upstream, stubborn):
    slow_up, fast_up = _slow_and_fast(hostile, upstream)
    s = stubborn([slow_up.spec(), fast_up.spec()], server_extra=["strategy = fastest"])
    # Fresh names every time: the cache must not answer for either.
    warm = [_who(s.port, f"warm{i}") for i in range(WARMUP)]
    assert set(warm) <= {"slow", "fast"}, warm
    measured = [_who(s.port, f"measured{i}") for i in range(MEASURED)]
    assert measured.count("fast") >= 8, (warm, measured)


@pytest.mark.parametrize("extra", [[], ["strategy = order"]], ids=["default", "order"])
def test_order_strategy_keeps_to_the_first_upstream(hostile, upstream, stubborn, extra):
    slow_up, fast_up = _slow_and_fast(hostile, upstream)
    s = stubborn([slow_up.spec(), fast_up.spec()], server_extra=extra)
    answers = [_who(s.port, f"order{i}") for i in range(MEASURED)]
    assert answers == ["slow"] * len(answers), answers
    assert slow.settle(fast_up.queries_seen) == 0, fast_up.queries()


QUARANTINED = "quarantin"


def _rogue(kind, hostile, upstream, certs):
    """A first upstream whose certificate fails the pin step, and how to
    count what it was asked.  The hostile one counts connections (a
    quarantined upstream gets none); unbound counts only queries, which a
    failed handshake never reaches, so there the incident log is the
    evidence of a new attempt."""
    if kind == "hostile":
        h = hostile(slow.Answer(hostile_mod.correct), name="rogue")
        # Its certificate is the good one, so pin another key.
        return h.spec(pins=[certs["rogue"].pin]), lambda: h.connections
    u = upstream("rogue", "rogue")
    return u.spec(pins=[certs["good"].pin]), u.queries_seen


# A new incident shows as its JSON record and as this warning; the line
# recalling the quarantine read from the state file mentions the old
# incident in other words.
NEW_INCIDENT = re.compile(r"trust-incident|trust incident; quarantined")


def _incident_lines(s):
    return [line for line in s.log_text().splitlines() if NEW_INCIDENT.search(line)]


def _first_run(stubborn, specs, extra, rogue_name):
    s1 = stubborn(specs, server_extra=extra)
    for i in range(3):
        assert _who(s1.port, f"first{i}") == "second"
    assert [i.get("upstream") for i in s1.incidents()] == [rogue_name], s1.incidents()
    status, hung = s1.stop()
    assert not hung and status == 0, (status, hung)
    return s1


@pytest.mark.parametrize("kind", ["hostile", "unbound"])
def test_quarantine_survives_a_restart_with_state_dir(hostile, upstream, stubborn, certs,
                                                      tmp_path, kind):
    rogue_spec, rogue_count = _rogue(kind, hostile, upstream, certs)
    second = upstream("second")
    specs = [rogue_spec, second.spec(pins=[certs["good"].pin])]
    state = tmp_path / "state"
    state.mkdir()
    extra = [f"state-dir = {state}"]

    _first_run(stubborn, specs, extra, rogue_spec.name)
    before = slow.settle(rogue_count)

    s2 = stubborn(specs, server_extra=extra)
    for i in range(3):
        assert _who(s2.port, f"again{i}") == "second"
    assert slow.settle(rogue_count) == before, "the quarantined upstream was contacted"
    if kind == "unbound":
        assert before == 0
    assert s2.incidents() == [], s2.incidents()
    assert _incident_lines(s2) == [], _incident_lines(s2)
    noted = [line for line in s2.log_text().splitlines()
             if re.search(rf"\b{rogue_spec.name}\b", line) and QUARANTINED in line]
    assert noted, "no line says the rogue upstream is still quarantined"


def test_without_state_dir_a_restart_forgets_the_quarantine(hostile, upstream, stubborn,
                                                           certs):
    # The control for the test above: the same sequence without a
    # state-dir does reach the rogue again, so the counts there can tell.
    rogue_spec, rogue_count = _rogue("hostile", hostile, upstream, certs)
    second = upstream("second")
    specs = [rogue_spec, second.spec(pins=[certs["good"].pin])]

    _first_run(stubborn, specs, [], rogue_spec.name)
    before = slow.settle(rogue_count)

    s2 = stubborn(specs)
    for i in range(3):
        assert _who(s2.port, f"again{i}") == "second"
    assert slow.wait_until(lambda: rogue_count() > before), "rogue never contacted again"
    assert [i.get("upstream") for i in s2.incidents()] == [rogue_spec.name], s2.incidents()
