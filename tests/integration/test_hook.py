"""on-incident: the program runs with the incident's JSON line on stdin,
detached, so a slow or hanging hook never holds up answers."""

import json
import os
import time

import clients
import servers


def _who(port, tag):
    q, r = clients.ask(port, servers.who_name(tag), "TXT")
    assert r.id == q.id
    return clients.answer_strings(r, "TXT")


def _wait_for(path, deadline_s=5.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if path.exists() and path.read_text().endswith("done\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the hook wrote nothing complete to {path}")


def test_hook_gets_the_incident_line(upstream, stubborn, certs, tmp_path):
    bad, good = upstream("first", "rogue"), upstream("second", "good")
    out = tmp_path / "hook.out"
    # A script: ';' would start a comment in the conf file.
    hook = tmp_path / "hook.sh"
    hook.write_text(f"pwd > {out}.cwd\n"
                    f"cat > {out}.tmp\necho done >> {out}.tmp\nmv {out}.tmp {out}\n")
    s = stubborn([bad.spec(pins=[certs["good"].pin]),
                  good.spec(pins=[certs["good"].pin])],
                 trust_extra=[f"on-incident = sh {hook}"])
    assert _who(s.port, "hook") == ["second"]
    text = _wait_for(out)
    record, done = text.splitlines()
    assert done == "done"
    # The hook sees exactly the line the log has.
    assert json.loads(record) == s.incidents()[0]
    assert json.loads(record)["reason"] == "pin"
    assert bad.queries_seen() == 0
    # It runs where stubborn was started.
    assert (tmp_path / "hook.out.cwd").read_text().strip() == os.getcwd()


def test_hanging_hook_blocks_nothing(upstream, stubborn, certs, tmp_path):
    bad, good = upstream("first", "rogue"), upstream("second", "good")
    mark = tmp_path / "started"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"echo $$ > {mark}.tmp\nmv {mark}.tmp {mark}\n"
                    "exec sleep 600\n")
    s = stubborn([bad.spec(pins=[certs["good"].pin]),
                  good.spec(pins=[certs["good"].pin])],
                 trust_extra=[f"on-incident = sh {hook}"])
    t0 = time.monotonic()
    assert _who(s.port, "hang0") == ["second"]
    for i in range(20):
        assert _who(s.port, f"hang{i + 1}") == ["second"]
    assert time.monotonic() - t0 < 5, "answers waited for the hook"
    end = time.monotonic() + 5
    while not mark.exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert mark.exists(), "the hook never ran"
    # ...and a hook that hangs is ended after its timeout (10 s).
    pid = int(mark.read_text())
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"hook {pid} still runs after 20 s")
