"""ct-watchlist and ct-hook: what certspotter is given and what it runs.
Here the hook gets certspotter-script(8)'s environment straight from the
test; test_certspotter.py runs the real certspotter against a test log."""

import hashlib
import json
import os
import subprocess
import time
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization

import clients
import servers
import slow

HOOK_TIMEOUT = 10


def pubkey_sha256(cert):
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_env(server_cert, watch_item="dns.test", cert_file=True):
    """The environment certspotter gives a script for a discovered_cert."""
    leaf = server_cert.leaf
    e = {
        "EVENT": "discovered_cert",
        "SUMMARY": f"certificate discovered for {watch_item}",
        "WATCH_ITEM": watch_item,
        "LOG_URI": "https://ct.test/log/",
        "ENTRY_INDEX": "7",
        "CERT_SHA256": server_cert.leaf_sha256,
        "PUBKEY_SHA256": pubkey_sha256(leaf),
        "SUBJECT_DN": leaf.subject.rfc4514_string(),
        "ISSUER_DN": leaf.issuer.rfc4514_string(),
        "NOT_BEFORE_RFC3339": leaf.not_valid_before.isoformat() + "Z",
        "NOT_AFTER_RFC3339": leaf.not_valid_after.isoformat() + "Z",
    }
    if cert_file:
        e["CERT_FILENAME"] = str(server_cert.chain_pem)
    return e


def run_hook(stubborn_bin, conf, env_vars):
    env = {k: v for k, v in os.environ.items() if k not in (
        "EVENT", "WATCH_ITEM", "CERT_FILENAME", "PUBKEY_SHA256")}
    env.update(env_vars)
    return subprocess.run([stubborn_bin, "ct-hook", "-c", str(conf)], env=env,
                          capture_output=True, text=True, timeout=HOOK_TIMEOUT)


def incidents(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def write_conf(tmp_path, upstreams, ca_file, extra=()):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    conf = tmp_path / "watch.conf"
    text = servers.stubborn_conf(servers.free_port(["127.0.0.1"]), upstreams, ca_file, False,
                                 server_extra=[f"state-dir = {state}"], trust_extra=list(extra))
    conf.write_text(text)
    return conf, state / "denylist"


def spec(name, pins=(), ca_file=None, host="dns.test"):
    return servers.UpstreamSpec(name, "127.0.0.1", 853, host, tuple(pins), ca_file)


def test_watchlist_names_every_upstream_once(stubborn_bin, certs, tmp_path):
    conf, _ = write_conf(tmp_path, [spec("a"), spec("b", host="DNS.test."),
                                    spec("c", host="other.test")], certs.root_pem)
    out = subprocess.run([stubborn_bin, "ct-watchlist", "-c", str(conf)],
                         capture_output=True, text=True, timeout=HOOK_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["dns.test", "other.test"]


def test_expected_certificate_is_no_incident(stubborn_bin, certs, tmp_path):
    conf, deny = write_conf(tmp_path, [spec("first", pins=[certs["good"].pin])],
                            certs.root_pem)
    r = run_hook(stubborn_bin, conf, cert_env(certs["good"]))
    assert r.returncode == 0, r.stderr
    assert incidents(r.stderr) == []
    assert "expected" in r.stderr
    assert not deny.exists()


def test_pinned_intermediate_makes_its_certificates_expected(stubborn_bin, certs, tmp_path):
    # Pins on the issuing CA's key: any leaf it signs is the operator's.
    from pki import spki_pin
    conf, deny = write_conf(tmp_path, [spec("first", pins=[spki_pin(certs.intermediate)])],
                            certs.root_pem)
    r = run_hook(stubborn_bin, conf, cert_env(certs["rogue"]))
    assert r.returncode == 0, r.stderr
    assert incidents(r.stderr) == []
    assert not deny.exists()


def test_other_key_is_an_incident_and_denied(stubborn_bin, certs, tmp_path):
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"cat > {out}.tmp && mv {out}.tmp {out}\n")
    conf, deny = write_conf(tmp_path, [spec("first", pins=[certs["good"].pin])],
                            certs.root_pem, extra=[f"on-incident = sh {hook}"])
    env = cert_env(certs["rogue"])
    r = run_hook(stubborn_bin, conf, env)
    assert r.returncode == 0, r.stderr
    (inc,) = incidents(r.stderr)
    assert inc["event"] == "ct-watch"
    assert inc["upstream"] == "first" and inc["host"] == "dns.test"
    assert inc["reason"] == "pin"
    assert inc["spki_pin"] == certs["rogue"].pin
    assert inc["leaf_sha256"] == certs["rogue"].leaf_sha256
    assert inc["issuer"] == env["ISSUER_DN"]
    assert inc["log_uri"] == env["LOG_URI"] and inc["entry_index"] == "7"
    assert inc["chain_pins"][0] == certs["rogue"].pin
    assert inc["action"] == "denied"
    assert certs["rogue"].pin in deny.read_text()
    # The on-incident hook gets the same line.
    assert slow.wait_until(out.exists), "the on-incident hook did not run"
    assert json.loads(out.read_text()) == inc

    # Seen again (certspotter retries, or the precertificate and the
    # certificate): still one entry.
    r = run_hook(stubborn_bin, conf, env)
    assert r.returncode == 0
    assert deny.read_text().count(certs["rogue"].pin) == 1


def test_key_from_the_certificate_when_pubkey_is_missing(stubborn_bin, certs, tmp_path):
    conf, deny = write_conf(tmp_path, [spec("first", pins=[certs["good"].pin])],
                            certs.root_pem)
    env = cert_env(certs["rogue"])
    del env["PUBKEY_SHA256"]
    r = run_hook(stubborn_bin, conf, env)
    assert [i["spki_pin"] for i in incidents(r.stderr)] == [certs["rogue"].pin]
    assert certs["rogue"].pin in deny.read_text()


def test_ca_file_tier_judges_by_issuer(stubborn_bin, certs, tmp_path):
    # No pins, a private trust tier: a certificate from another CA (the
    # Fina case: publicly trusted, not the operator's) is unexpected.
    conf, deny = write_conf(tmp_path, [spec("private", ca_file=certs.root_pem)],
                            certs.root_pem)
    r = run_hook(stubborn_bin, conf, cert_env(certs["good"]))
    assert incidents(r.stderr) == [] and not deny.exists(), r.stderr
    r = run_hook(stubborn_bin, conf, cert_env(certs["untrusted"]))
    (inc,) = incidents(r.stderr)
    assert inc["reason"] == "ca"
    assert "does not chain" in inc["detail"]
    assert certs["untrusted"].pin in deny.read_text()


def test_system_store_without_pins_is_not_judged(stubborn_bin, certs, tmp_path):
    conf = tmp_path / "sys.conf"
    state = tmp_path / "state"
    state.mkdir()
    conf.write_text(f"[server]\nstate-dir = {state}\n[trust]\nct = off\n"
                    "[upstream pub]\nurl = tls://dns.test\naddress = 127.0.0.1\n")
    r = run_hook(stubborn_bin, conf, cert_env(certs["rogue"]))
    assert r.returncode == 0
    assert incidents(r.stderr) == []
    assert "cannot tell" in r.stderr
    assert not (state / "denylist").exists()


@pytest.mark.parametrize("event", [
    {"EVENT": "malformed_cert", "LOG_URI": "https://ct.test/", "ENTRY_INDEX": "3",
     "PARSE_ERROR": "bad DER"},
    {"EVENT": "error", "SUMMARY": "log unreachable"},
    {"EVENT": "something_new", "SUMMARY": "?"},
    {"EVENT": "discovered_cert", "WATCH_ITEM": "dns.test", "PUBKEY_SHA256": "zz"},
    {},
])
def test_other_events_are_logged_never_fatal(stubborn_bin, certs, tmp_path, event):
    conf, deny = write_conf(tmp_path, [spec("first", pins=[certs["good"].pin])],
                            certs.root_pem)
    r = run_hook(stubborn_bin, conf, event)
    assert r.returncode == 0, r.stderr
    assert "warning: ct-hook:" in r.stderr, r.stderr
    assert not deny.exists()


def _metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_running_daemon_refuses_a_denied_key(stubborn_bin, stubborn, upstream, certs,
                                             tmp_path):
    # The rogue upstream has no pins: only the deny list can stop it.
    rogue, good = upstream("first", "rogue"), upstream("second", "good")
    state = tmp_path / "state"
    state.mkdir()
    mport = servers.free_port(["127.0.0.1"])
    s = stubborn([rogue.spec(), good.spec(pins=[certs["good"].pin])],
                 server_extra=[f"state-dir = {state}", f"metrics = 127.0.0.1:{mport}"])
    q, r = clients.ask(s.port, servers.who_name("before"), "TXT")
    assert clients.answer_strings(r, "TXT") == ["first"]
    assert _metric(mport, "stubborn_denylist_keys") == 0

    # ct-hook with the daemon's own conf: the rogue key is unexpected for
    # "second" (pinned), so it goes on the deny list.
    r = run_hook(stubborn_bin, s.conf, cert_env(certs["rogue"]))
    assert [i["upstream"] for i in incidents(r.stderr)] == ["second"], r.stderr
    t0 = time.monotonic()
    assert slow.wait_until(lambda: "deny list" in s.log_text() and
                           "new key" in s.log_text(), timeout=5), s.log_text()
    took = time.monotonic() - t0
    assert took < 3, took
    # The open connection to the rogue upstream was closed; a new one meets
    # the gate, which refuses the key; the next upstream answers.
    q, r = clients.ask(s.port, servers.who_name("after"), "TXT")
    assert clients.answer_strings(r, "TXT") == ["second"]
    inc = [i for i in s.incidents() if i.get("event") == "trust-incident"]
    assert [(i["upstream"], i["reason"]) for i in inc] == [("first", "denied")], inc
    assert certs["rogue"].pin in inc[0]["detail"]
    assert _metric(mport, "stubborn_denylist_keys") == 1
    assert _metric(mport, "stubborn_ct_watch_incidents_total") == 1
    assert _metric(mport, 'stubborn_trust_incidents_total{upstream="first",reason="denied"}') \
        in (None, 1)


def test_corrupt_deny_list_is_reported_and_ignored(stubborn, upstream, certs, tmp_path):
    good = upstream("first", "good")
    state = tmp_path / "state"
    state.mkdir()
    (state / "denylist").write_bytes(b"\x00\xffnot a key\nsha256/AAAA\n" + b"x" * 5000 + b"\n")
    s = stubborn([good.spec(pins=[certs["good"].pin])], server_extra=[f"state-dir = {state}"])
    q, r = clients.ask(s.port, servers.who_name("corrupt"), "TXT")
    assert clients.answer_strings(r, "TXT") == ["first"]
    assert "deny list:" in s.log_text() and "skipped" in s.log_text(), s.log_text()
    assert s.alive()


def test_fifos_in_the_state_dir_do_not_block_the_start(stubborn, upstream, certs, tmp_path):
    # A FIFO where the deny list or the quarantine file should be would
    # block a plain open for ever: stubborn says so and starts.
    good = upstream("first", "good")
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "denylist")
    os.mkfifo(state / "quarantine")
    s = stubborn([good.spec(pins=[certs["good"].pin])], server_extra=[f"state-dir = {state}"])
    q, r = clients.ask(s.port, servers.who_name("fifo"), "TXT")
    assert clients.answer_strings(r, "TXT") == ["first"]
    log = s.log_text()
    assert f"{state}/denylist: not a regular file" in log, log
    assert f"quarantines in {state}/quarantine: cannot read them (not a regular file)" in log, log
    assert s.alive()
