"""SIGHUP reload: stubborn re-reads its conf in place.  A good conf takes
effect at once (upstreams, pins, allow) while the process, its listening
port and its cache carry on; a bad one is reported with FILE:LINE and the
old conf keeps running untouched."""

import re
import signal
import socket

import dns.rcode
import pytest

import clients
import servers
import slow

# A reload is local work (parse, load CA files): seconds would mean a hang.
RELOAD_TIMEOUT = 5.0


def _who(port, tag, tcp=False, source=None):
    q, r = clients.ask(port, servers.who_name(tag), "TXT", tcp=tcp, source=source)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
    return clients.answer_strings(r, "TXT")


def _conf_text(s, specs, certs, ipv6, **kw):
    # Same port and listen lines as the fixture wrote, so the only change
    # a reload sees is the one a test makes.
    return servers.stubborn_conf(s.port, specs, certs.root_pem, ipv6, **kw)


def _error_re(s, lineno=None):
    line = str(lineno) if lineno is not None else r"\d+"
    return re.compile(re.escape(str(s.conf)) + ":" + line + r":")


def _hup(s, until):
    """SIGHUP stubborn; wait for a log line after the signal that satisfies
    until(line); return the log written since the signal."""
    assert s.alive(), s.log_text()
    start = len(s.log_text())
    pid = s.proc.pid
    s.proc.send_signal(signal.SIGHUP)

    def new_lines():
        return s.log_text()[start:].splitlines()

    found = slow.wait_until(lambda: [l for l in new_lines() if until(l)],
                            timeout=RELOAD_TIMEOUT)
    text = "\n".join(new_lines())
    # Reloading is no restart: the very process we started keeps running.
    assert s.alive(), f"stubborn died on SIGHUP:\n{text}"
    assert s.proc.pid == pid
    return found, text


def _reload_ok(s):
    found, text = _hup(s, lambda l: re.search(r"\breloaded\b", l) is not None)
    assert found, f"no 'reloaded' line within {RELOAD_TIMEOUT}s of SIGHUP:\n{text}"
    # A 'reloaded' line next to a conf error would mean half a conf applied.
    assert not _error_re(s).search(text), text
    return text


def test_reload_applies_new_pins_to_an_open_upstream(upstream, stubborn, certs, ipv6):
    first = upstream("first", "good")
    second = upstream("second", "good")
    good = certs["good"].pin
    s = stubborn([first.spec(pins=[good]), second.spec(pins=[good])])
    assert _who(s.port, "before") == ["first"]
    assert s.incidents() == []
    # Without an open connection to first there would be nothing for the
    # reload to close, and the test would prove less than it claims.
    assert servers.tcp_connections(first.address, first.port) >= 1
    first_seen = slow.settle(first.queries_seen)

    # first keeps serving the same certificate: only the new pin set can
    # turn it away, and only if the connection made under the old one is
    # not reused.
    s.conf.write_text(_conf_text(s, [first.spec(pins=[certs["rogue"].pin]),
                                     second.spec(pins=[good])], certs, ipv6))
    _reload_ok(s)
    assert slow.wait_until(
        lambda: servers.tcp_connections(first.address, first.port) == 0), \
        "the connection to first made under the old pins is still open"

    assert _who(s.port, "after") == ["second"]
    assert slow.settle(first.queries_seen) == first_seen, first.queries()

    incidents = s.incidents()
    mine = [i for i in incidents if i.get("upstream") == "first"]
    assert mine, f"no trust-incident for first:\n{s.log_text()}"
    assert all(i.get("upstream") == "first" for i in incidents), incidents
    assert mine[0]["reason"] == "pin", mine[0]
    assert mine[0]["spki_pin"] == good, mine[0]
    assert mine[0]["address"] == f"{first.address}:{first.port}", mine[0]


def test_broken_conf_keeps_the_old_one_running(upstream, stubborn, certs, ipv6):
    first = upstream("first")
    second = upstream("second")
    s = stubborn([first.spec()])
    assert _who(s.port, "before") == ["first"]

    # The bad line comes after a complete [upstream second]: a parser that
    # applied what it had read so far would switch to second.
    good_text = _conf_text(s, [second.spec()], certs, ipv6)
    lineno = len(good_text.splitlines()) + 1
    s.conf.write_text(good_text + "pins = x\n")
    found, text = _hup(s, lambda l: "reload" in l and _error_re(s, lineno).search(l))
    assert found, (f"no line with 'reload' and {s.conf}:{lineno}: within "
                   f"{RELOAD_TIMEOUT}s of SIGHUP:\n{text}")

    for i in range(3):
        assert _who(s.port, f"kept{i}", tcp=bool(i % 2)) == ["first"]
    assert slow.settle(second.queries_seen) == 0, second.queries()

    s.conf.write_text(good_text)
    _reload_ok(s)
    assert _who(s.port, "fixed") == ["second"]


def test_a_ca_file_that_loads_nothing_is_blamed_on_its_line(upstream, stubborn, certs, ipv6,
                                                           tmp_path):
    # As check-config says it: file:line, and the old conf keeps running.
    first = upstream("first")
    second = upstream("second")
    s = stubborn([first.spec()])
    assert _who(s.port, "before") == ["first"]
    notpem = tmp_path / "not-a-ca.pem"
    notpem.write_text("not a certificate\n")
    text = _conf_text(s, [second.spec()], certs, ipv6).replace(str(certs.root_pem), str(notpem))
    assert str(notpem) in text
    s.conf.write_text(text)
    lineno = next(i for i, l in enumerate(text.splitlines(), 1) if str(notpem) in l)
    found, log = _hup(s, lambda l: "reload" in l and _error_re(s, lineno).search(l))
    assert found, f"no reload line naming {s.conf}:{lineno}:\n{log}"
    assert f"ca-file {notpem}: no certificate loads from it" in log, log
    assert "has errors; the running configuration stays" in log, log
    for i in range(2):
        assert _who(s.port, f"kept{i}", tcp=bool(i % 2)) == ["first"]
    assert slow.settle(second.queries_seen) == 0, second.queries()


def test_cache_survives_reload(upstream, stubborn, certs, ipv6):
    first = upstream("first")
    s = stubborn([first.spec()])
    name = servers.zone_name(7)
    _, r = clients.ask(s.port, name, "A")
    assert clients.answer_strings(r, "A") == [servers.zone_a(7)]
    assert slow.wait_until(lambda: first.queries_seen() >= 1), first.log_text()
    seen = slow.settle(first.queries_seen)

    # Equivalent, not byte-identical: a reload that skipped an unchanged
    # file would prove nothing about the cache.
    s.conf.write_text("# rewritten for reload\n"
                      + _conf_text(s, [first.spec()], certs, ipv6))
    _reload_ok(s)

    for tcp in (False, True):
        _, r = clients.ask(s.port, name, "A", tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR, clients.rcode_text(r)
        assert clients.answer_strings(r, "A") == [servers.zone_a(7)]
    assert slow.settle(first.queries_seen) == seen, first.queries()
    # The cache answered because it survived, not because nothing works.
    assert _who(s.port, "fresh") == ["first"]


def test_lower_max_ttl_holds_for_answers_cached_before(upstream, stubborn, certs, ipv6):
    """max-ttl takes effect at once: an answer cached under the old one is
    served with no TTL above the new one, and still from the cache."""
    first = upstream("first")
    s = stubborn([first.spec()])
    name = servers.zone_name(8)
    _, r = clients.ask(s.port, name, "A")
    assert r.answer[0].ttl > 60, r
    seen = slow.settle(first.queries_seen)
    s.conf.write_text(_conf_text(s, [first.spec()], certs, ipv6,
                                 cache_extra=["max-ttl = 60"]))
    _reload_ok(s)
    for tcp in (False, True):
        _, r = clients.ask(s.port, name, "A", tcp=tcp)
        assert clients.answer_strings(r, "A") == [servers.zone_a(8)]
        assert 0 < r.answer[0].ttl <= 60, r
    assert slow.settle(first.queries_seen) == seen, first.queries()


def test_upstream_added_by_reload_is_used(upstream, stubborn, certs, ipv6):
    first = upstream("first")
    second = upstream("second")
    s = stubborn([first.spec()])
    assert _who(s.port, "before") == ["first"]

    s.conf.write_text(_conf_text(s, [second.spec(), first.spec()], certs, ipv6))
    _reload_ok(s)
    first_seen = slow.settle(first.queries_seen)
    for i in range(3):
        assert _who(s.port, f"after{i}", tcp=bool(i % 2)) == ["second"]
    assert slow.settle(first.queries_seen) == first_seen, first.queries()


def test_a_down_upstream_is_still_down_after_a_reload_and_seen_back(upstream, stubborn,
                                                                    certs, ipv6):
    # A reload keeps what is known of an upstream's health: one down stays
    # down, rather than being shown up without a word, and is tried again
    # by itself, so its return is seen and logged though no query needs it.
    first, second = upstream("first"), upstream("second")
    s = stubborn([first.spec(), second.spec()])
    first.stop()
    second.stop()
    q, r = clients.ask(s.port, servers.who_name("gone"), "TXT", timeout=5.0)
    assert r.rcode() == dns.rcode.SERVFAIL, clients.rcode_text(r)
    assert "upstream second: down (cannot connect)" in s.log_text(), s.log_text()
    _reload_ok(s)
    first.start()
    second.start()
    assert slow.wait_until(lambda: clients.answer_strings(clients.ask(
        s.port, servers.who_name(f"back{len(s.log_text())}"), "TXT", timeout=5.0)[1],
        "TXT") == ["first"], timeout=10.0, step=0.2), s.log_text()
    assert slow.wait_until(
        lambda: re.search(r"reloaded(.|\n)*upstream second: up", s.log_text()),
        timeout=10.0), s.log_text()
    assert second.queries_seen() == 0, second.queries()


def test_allow_tightened_by_reload_refuses(upstream, stubborn, certs, ipv6):
    first = upstream("first")
    s = stubborn([first.spec()])
    assert _who(s.port, "before", source="127.0.0.1") == ["first"]

    s.conf.write_text(_conf_text(s, [first.spec()], certs, ipv6,
                                 allow="127.0.0.2/32"))
    _reload_ok(s)
    seen = slow.settle(first.queries_seen)
    for tcp in (False, True):
        q, r = clients.ask(s.port, servers.zone_name(11), "A", tcp=tcp,
                           source="127.0.0.1")
        assert r.id == q.id
        assert r.rcode() == dns.rcode.REFUSED, clients.rcode_text(r)
        assert r.answer == []
    assert slow.settle(first.queries_seen) == seen, first.queries()
    # Refusal by the new list, not a listener that stopped answering.
    assert _who(s.port, "allowed", source="127.0.0.2") == ["first"]


def test_restart_only_changes_are_named_and_their_undoing_is_not(upstream, stubborn,
                                                                  certs, ipv6):
    first = upstream("first")
    s = stubborn([first.spec()])
    spec = [first.spec()]
    restart = re.compile(r"reload: .*need.* a restart")
    other = servers.free_port(["127.0.0.1"])

    s.conf.write_text(_conf_text(s, spec, certs, ipv6, cache_extra=["size = 5"],
                                 server_extra=[f"listen = 127.0.0.1:{other}",
                                               f"metrics = 127.0.0.1:{other}"]))
    text = _reload_ok(s)
    said = restart.findall(text)
    assert len(said) == 3, text
    for what in ("listen", "metrics", "cache size"):
        assert what in text, (what, text)
    # Not taken up: nothing listens on the new port.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", other), timeout=2).close()

    # Back to the conf it started with: nothing needs a restart any more.
    s.conf.write_text(_conf_text(s, spec, certs, ipv6))
    text = _reload_ok(s)
    assert not restart.search(text), text
    assert _who(s.port, "after") == ["first"]
