"""The whole CT watch: the real certspotter monitors an RFC 6962 log of our
own with the watch list from `stubborn ct-watchlist` and runs
`stubborn-ct-hook` for each event; a rogue certificate for an upstream's
name (trusted CA, another key) becomes an incident and a denied key, and
the running stubborn refuses that key at once while the next upstream
answers.

certspotter 0.16 polls at start and then every 5 minutes, with no way to
poll sooner: "the next poll" is a restart with the state directory kept,
which is exactly the poll a running certspotter would make next (see
test_ct_log.py)."""

import json
import os
import subprocess
import time

from cryptography.hazmat.primitives.serialization import Encoding

import clients
import ct_log
import servers
import slow

DER = Encoding.DER
POLL_BOUND = 20.0


def _poll_done(cs, log):
    return slow.wait_until(lambda: cs.verified_size(log) == log.sth.tree_size,
                           timeout=POLL_BOUND)


def _who(port, tag):
    q, r = clients.ask(port, servers.who_name(tag), "TXT")
    assert r.id == q.id
    return clients.answer_strings(r, "TXT")


def test_certspotter_turns_a_rogue_certificate_into_a_refused_key(
        ct_logs, certspotter, stubborn_bin, stubborn, upstream, certs, tmp_path):
    # "first" serves the rogue key and has no pins: before the deny list
    # it is used.  "second" is the operator's, pinned to its own key.
    rogue_up, good_up = upstream("first", "rogue"), upstream("second", "good")
    state = tmp_path / "state"
    state.mkdir()
    incidents_out = tmp_path / "incidents"
    on_incident = tmp_path / "on-incident.sh"
    on_incident.write_text(f"cat >> {incidents_out}\n")
    s = stubborn([rogue_up.spec(), good_up.spec(pins=[certs["good"].pin])],
                 server_extra=[f"state-dir = {state}"],
                 trust_extra=[f"on-incident = sh {on_incident}"])
    assert _who(s.port, "before") == ["first"]

    # certspotter runs its -script with no arguments: stubborn-ct-hook
    # (the name make install links) is ct-hook with the default conf, so a
    # conf elsewhere takes a one-line wrapper.
    hook = tmp_path / "stubborn-ct-hook"
    hook.write_text(f"#!/bin/sh\nexec {stubborn_bin} ct-hook -c {s.conf} 2>> {tmp_path}/hook.log\n")
    hook.chmod(0o755)
    watch = subprocess.run([stubborn_bin, "ct-watchlist", "-c", str(s.conf)],
                           capture_output=True, text=True, timeout=10)
    assert watch.returncode == 0 and watch.stdout.split() == ["dns.test"], watch

    log = ct_logs()
    chain = [certs.intermediate.public_bytes(DER), certs.root.public_bytes(DER)]
    log.add_cert(certs["good"].leaf.public_bytes(DER), chain)
    log.publish()
    logs = log.write_log_list(tmp_path / "logs.json")
    cs = certspotter(logs, watch.stdout.split(), hook, trust=log.ca_pem)

    # The expected certificate: seen, judged, no incident.
    assert _poll_done(cs, log), cs.log_text()
    assert slow.wait_until(lambda: "expected" in _read(tmp_path / "hook.log")), \
        _read(tmp_path / "hook.log") + cs.log_text()
    assert not (state / "denylist").exists()
    assert not incidents_out.exists()
    assert cs.stop() == (0, False), cs.log_text()

    # The rogue one, logged; the next poll finds it.
    log.add_cert(certs["rogue"].leaf.public_bytes(DER), chain)
    log.publish()
    cs.start()
    t0 = cs.started_at
    assert slow.wait_until(lambda: (state / "denylist").exists(), timeout=POLL_BOUND), \
        _read(tmp_path / "hook.log") + cs.log_text()
    to_deny = time.monotonic() - t0
    assert certs["rogue"].pin in (state / "denylist").read_text()
    assert _poll_done(cs, log), cs.log_text()
    assert cs.alive(), "the hook's exit status stopped certspotter:\n" + cs.log_text()

    # The incident: logged by the hook and handed to on-incident.
    (inc,) = [json.loads(line) for line in _read(tmp_path / "hook.log").splitlines()
              if line.startswith("{")]
    assert inc["event"] == "ct-watch" and inc["upstream"] == "second"
    assert inc["spki_pin"] == certs["rogue"].pin
    assert inc["leaf_sha256"] == certs["rogue"].leaf_sha256
    assert inc["log_uri"] == log.url and inc["entry_index"] == "1"
    assert slow.wait_until(lambda: incidents_out.exists() and
                           "ct-watch" in incidents_out.read_text())

    # The running stubborn takes the key up and refuses it; the next
    # upstream answers.
    assert slow.wait_until(lambda: "new key" in s.log_text(), timeout=5), s.log_text()
    to_refuse = time.monotonic() - t0
    assert _who(s.port, "after") == ["second"]
    refused = [i for i in s.incidents() if i.get("event") == "trust-incident"]
    assert [(i["upstream"], i["reason"]) for i in refused] == [("first", "denied")], refused
    assert refused[0]["spki_pin"] == certs["rogue"].pin
    print(f"rogue certificate: denied {to_deny:.2f}s and refused {to_refuse:.2f}s "
          f"after certspotter's poll began")


def _read(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
