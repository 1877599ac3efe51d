#!/bin/sh
# `make check` entry for the integration suite.  automake runs this from the
# build directory with STUBBORN set to the built binary; the suite itself
# locates everything else.  Exit status is pytest's, except that "no tests
# collected" (5) counts as a failure: a suite that ran nothing proved nothing.

here=$(cd "$(dirname "$0")" && pwd)

# Debian's interpreter on purpose: pytest, dnspython and cryptography come
# from its packages, and whatever python3 is first on PATH may lack them.
python=/usr/bin/python3

if [ ! -x "$python" ]; then
	echo "$0: $python not found; the suite needs Debian's python3" >&2
	exit 1
fi
if ! why=$("$python" -c 'import pytest, dns.message, cryptography' 2>&1); then
	echo "$0: $python cannot run the suite: $(echo "$why" | tail -n 1)" >&2
	echo "$0: install python3-pytest python3-dnspython python3-cryptography" >&2
	exit 1
fi

# The source tree is read-only under `make distcheck`: no bytecode, no cache.
PYTHONDONTWRITEBYTECODE=1
export PYTHONDONTWRITEBYTECODE

"$python" -m pytest -p no:cacheprovider -v "$here" "$@"
status=$?
if [ "$status" -eq 5 ]; then
	echo "$0: pytest collected no tests" >&2
	exit 1
fi
exit "$status"
