/*
 * The files stubborn keeps in state-dir, as they may be found after a
 * crash, a full disk or a hand edit: each input is written as both
 * state-dir/denylist and state-dir/quarantine (a seed for the one is a
 * corrupt file for the other).
 *
 * The deny list goes through denylist_load, then the gate's check with
 * the test chain (a hit exactly when a key of the chain was read), then
 * denylist_add of the test leaf's key as ct-hook does on the damaged
 * file: read back, the key must be there and every key read before too.
 * The quarantine file is read by upstream_pool_new, which is how the
 * daemon reaches it (quarantine_load is static); a quarantine read must
 * lie in the future and belong to a configured upstream.
 *
 * The state directory is a temporary one, on /dev/shm when there is one
 * (denylist_add syncs the file and its directory).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "stubborn/config.h"
#include "stubborn/denylist.h"
#include "stubborn/log.h"
#include "stubborn/upstream.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static char			 dir[256];
static char			 denypath[300], quarpath[300], lockpath[310];
static FILE			*devnull;
static struct event_base	*base;
static struct config		*cfg;
static STACK_OF(X509)		*chain;
static struct pin		 chain_pins[2];
static bool			 debug;

static void
check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_state: %s\n", what);
		abort();
	}
}

static void
cleanup(void)
{
	unlink(denypath);
	unlink(quarpath);
	unlink(lockpath);
	rmdir(dir);
}

static X509 *
read_cert(const char *path)
{
	FILE *fp = fopen(path, "r");
	X509 *x = fp ? PEM_read_X509(fp, NULL, NULL, NULL) : NULL;

	if (fp != NULL)
		fclose(fp);
	check(x != NULL, path);
	return x;
}

static void
setup(void)
{
	const char *tmp = getenv("TMPDIR");
	char conf[1024], path[64];
	int fd, n;

	debug = getenv("STUBBORN_FUZZ_DEBUG") != NULL;
	log_setlevel(debug ? LOG_DEBUG : LOG_ERR);
	devnull = fopen(debug ? "/dev/stderr" : "/dev/null", "w");
	if (access("/dev/shm", W_OK) == 0)
		tmp = "/dev/shm";
	else if (tmp == NULL || *tmp == '\0')
		tmp = "/tmp";
	snprintf(dir, sizeof(dir), "%s/stubborn-fuzz-state-XXXXXX", tmp);
	check(mkdtemp(dir) != NULL, "mkdtemp");
	atexit(cleanup);
	snprintf(denypath, sizeof(denypath), "%s/%s", dir, DENYLIST_FILE);
	snprintf(quarpath, sizeof(quarpath), "%s/quarantine", dir);
	snprintf(lockpath, sizeof(lockpath), "%s.lock", denypath);

	/* The names and URLs the quarantine seeds use. */
	n = snprintf(conf, sizeof(conf),
	    "[server]\nstate-dir = %s\n[trust]\nct = off\n"
	    "[upstream first]\nurl = tls://dns.test\naddress = 127.0.0.1\n"
	    "[upstream second]\nurl = https://dns.test/dns-query\n"
	    "address = 127.0.0.2\n"
	    "[upstream third]\nurl = tls://dns.test:8853\n"
	    "address = 127.0.0.3\n", dir);
	if ((fd = memfd_create("conf", 0)) == -1 ||
	    write(fd, conf, (size_t)n) != n)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	cfg = config_load(path, true, stderr);
	close(fd);
	check(cfg != NULL, "the conf does not load");
	check((base = event_base_new()) != NULL, "event_base_new");

	chain = sk_X509_new_null();
	sk_X509_push(chain, read_cert(FUZZ_DATA "/leaf.pem"));
	sk_X509_push(chain, read_cert(FUZZ_DATA "/ca.pem"));
	for (int i = 0; i < 2; i++)
		check(trust_pin_of_cert(sk_X509_value(chain, i),
		    &chain_pins[i]) == 0, "trust_pin_of_cert");
}

static void
put(const char *path, const uint8_t *data, size_t len)
{
	FILE *fp = fopen(path, "w");

	check(fp != NULL && fwrite(data, 1, len, fp) == len &&
	    fclose(fp) == 0, path);
}

static void
fuzz_denylist(const uint8_t *data, size_t len)
{
	struct pin *keys, *again;
	size_t n, n2, i, j;
	bool leaf_in, any_in;
	int depth, rc, saved = -1;
	struct pin hit;

	put(denypath, data, len);
	check(denylist_load(denypath, &keys, &n, devnull) == 0,
	    "a deny list that is there cannot be read");
	for (i = 0; i < n; i++)
		for (j = 0; j < i; j++)
			check(memcmp(&keys[i], &keys[j], sizeof(keys[i])) != 0,
			    "a key read twice");

	/* The gate: the first certificate of the chain with a denied key. */
	leaf_in = trust_pin_match(keys, n, &chain_pins[0]);
	any_in = leaf_in || trust_pin_match(keys, n, &chain_pins[1]);
	again = n ? malloc(n * sizeof(*again)) : NULL;
	if (n)
		memcpy(again, keys, n * sizeof(*again));
	denylist_set(keys, n);		/* taken over */
	check(denylist_count() == n, "denylist_count");
	depth = denylist_check(chain, &hit);
	check(depth == (leaf_in ? 0 : any_in ? 1 : -1),
	    "the gate's check disagrees with the keys read");
	if (depth >= 0)
		check(memcmp(&hit, &chain_pins[depth], sizeof(hit)) == 0,
		    "the gate names the wrong key");
	denylist_set(NULL, 0);

	/*
	 * ct-hook adds the leaf's key to whatever is there.  denylist_add
	 * reports the lines it cannot read to stderr, a line per line: not
	 * a thing to do thousands of times a second.
	 */
	if (!debug) {
		fflush(stderr);
		saved = dup(STDERR_FILENO);
		dup2(fileno(devnull), STDERR_FILENO);
	}
	rc = denylist_add(denypath, &chain_pins[0], "upstream=fuzz cert=ab");
	if (!debug) {
		fflush(stderr);
		dup2(saved, STDERR_FILENO);
		close(saved);
	}
	check(rc == (leaf_in ? 0 : 1), "denylist_add");
	check(denylist_load(denypath, &keys, &n2, devnull) == 0,
	    "the deny list cannot be read after an add");
	check(n2 == n + (leaf_in ? 0 : 1), "an add changed the keys read");
	check(trust_pin_match(keys, n2, &chain_pins[0]),
	    "the key added is not read back");
	for (i = 0; i < n; i++)
		check(trust_pin_match(keys, n2, &again[i]),
		    "a key was lost by an add");
	free(keys);
	free(again);
	unlink(lockpath);
	if (debug)
		fprintf(stderr, "deny list: %zu keys, gate depth %d, leaf key "
		    "%s\n", n, depth, rc ? "added" : "there");
}

static bool
no_cb(void *arg, struct txq *q, uint8_t *msg, size_t len)
{
	(void)arg;
	(void)q;
	(void)msg;
	(void)len;
	abort();
}

static void
no_failed_cb(void *arg, struct txq *q, struct upstream *up, bool same)
{
	(void)arg;
	(void)q;
	(void)up;
	(void)same;
	abort();
}

static void
fuzz_quarantine(const uint8_t *data, size_t len)
{
	const struct upstream_cbs cbs = { no_cb, no_failed_cb, NULL };
	struct upstream_pool *pool;
	time_t now = time(NULL);
	size_t i;
	bool any_up = false;

	put(quarpath, data, len);
	pool = upstream_pool_new(base, cfg, NULL, &cbs);
	check(pool != NULL, "upstream_pool_new");
	check(upstream_pool_count(pool) == cfg->nupstreams, "pool size");
	for (i = 0; i < upstream_pool_count(pool); i++) {
		struct upstream *up = upstream_pool_get(pool, i);

		any_up |= up->state == UPSTREAM_UP;
		check(up->state == UPSTREAM_UP ||
		    (up->state == UPSTREAM_QUARANTINED &&
		    up->quarantine_until > now),
		    "an upstream quarantined by a stale line");
		if (debug && up->state == UPSTREAM_QUARANTINED)
			fprintf(stderr, "quarantine: %s until %lld\n",
			    up->conf->name, (long long)up->quarantine_until);
		if (up->state == UPSTREAM_QUARANTINED)
			check(upstream_pick(pool, ~((uint64_t)1 << i), false) == NULL,
			    "a quarantined upstream was picked");
	}
	/* Every other one is quarantined: nothing for health to reconnect. */
	check(upstream_pool_healthy(pool) == any_up, "health verdict");
	upstream_pool_free(pool);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (base == NULL)
		setup();
	fuzz_denylist(data, len);
	fuzz_quarantine(data, len);
	ERR_clear_error();
	return 0;
}
