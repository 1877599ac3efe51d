"""`user = NAME` in [server]: stubborn binds and loads its trust store as
root, then gives up root for good before serving anyone."""

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

import clients
import servers

RUN_TIMEOUT = 10.0


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this system has no user 'nobody'")


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="dropping privileges needs root; run the suite as root")
def test_runs_as_configured_user(upstream, stubborn, certs):
    nobody = _nobody()
    first = upstream("first")
    s = stubborn([first.spec(pins=[certs["good"].pin])], server_extra=["user = nobody"])

    # Served from after the drop (it happens before 'ready'): the upstream
    # connection and the listeners both work without root.
    for i, tcp in enumerate((False, True)):
        q, r = clients.ask(s.port, servers.zone_name(60 + i), "A", tcp=tcp)
        assert r.id == q.id
        assert clients.answer_strings(r, "A") == [servers.zone_a(60 + i)]

    st = servers.proc_status(s.proc.pid)
    # Real, effective, saved and filesystem IDs: any one left at 0 would
    # let the process become root again.
    assert st["Uid"] == [str(nobody.pw_uid)] * 4, st["Uid"]
    assert st["Gid"] == [str(nobody.pw_gid)] * 4, st["Gid"]
    # root's supplementary groups must not survive the switch either.
    assert st["Groups"] == [str(nobody.pw_gid)], st["Groups"]

    q, r = clients.ask(s.port, servers.zone_name(62), "AAAA", tcp=True)
    assert clients.answer_strings(r, "AAAA") == [servers.zone_aaaa(62)]

    # SIGTERM handling and cleanup must not need anything root had.
    status, hung = s.stop()
    assert not hung, "stubborn did not exit after SIGTERM"
    assert status == 0, f"stubborn exited with {status} after SIGTERM"


def test_state_dir_it_cannot_write_is_warned_about_at_start(upstream, stubborn, certs,
                                                           tmp_path):
    """Quarantines are kept in state-dir: a daemon that cannot write there
    says so when it starts, not at the first incident."""
    first = upstream("first")
    absent = tmp_path / "absent"
    s = stubborn([first.spec(pins=[certs["good"].pin])],
                 server_extra=[f"state-dir = {absent}"])
    assert f"state-dir {absent} is not writable" in s.log_text(), s.log_text()
    s.stop()
    ok = tmp_path / "state"
    ok.mkdir()
    s = stubborn([first.spec(pins=[certs["good"].pin])], server_extra=[f"state-dir = {ok}"])
    assert "is not writable" not in s.log_text(), s.log_text()


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="dropping privileges needs root; run the suite as root")
def test_state_dir_owned_by_root_is_warned_about_after_the_drop(upstream, stubborn, certs):
    nobody = _nobody()
    first = upstream("first")
    # Under /tmp, not tmp_path: nobody must be able to reach it.
    state = tempfile.mkdtemp(prefix="stubborn-state-", dir="/tmp")
    try:
        os.chmod(state, 0o755)
        s = stubborn([first.spec(pins=[certs["good"].pin])],
                     server_extra=["user = nobody", f"state-dir = {state}"])
        assert f"state-dir {state} is not writable (Permission denied)" in s.log_text(), \
            s.log_text()
        s.stop()
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        s = stubborn([first.spec(pins=[certs["good"].pin])],
                     server_extra=["user = nobody", f"state-dir = {state}"])
        assert "is not writable" not in s.log_text(), s.log_text()
        s.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_unknown_user_is_refused(stubborn_bin, certs, ipv6, tmp_path):
    # Decided before serving, whether or not the suite runs as root: a
    # typo in `user` must not leave stubborn running with root's rights.
    listen = ["127.0.0.1"] + (["::1"] if ipv6 else [])
    port = servers.free_port(listen)
    nowhere = servers.UpstreamSpec("first", "127.0.0.2", servers.free_port(["127.0.0.2"]))
    conf = tmp_path / "stubborn.conf"
    conf.write_text(servers.stubborn_conf(port, [nowhere], certs.root_pem, ipv6,
                                          server_extra=["user = no-such-user-xyz"]))
    proc = subprocess.Popen([stubborn_bin, "run", "-c", str(conf), "-f"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        pytest.fail(f"stubborn still running {RUN_TIMEOUT}s after start with an "
                    f"unknown user:\n{out}")
    assert proc.returncode != 0, out
    assert "no-such-user-xyz" in out, out
    assert not servers.Stubborn.READY.search(out), out
