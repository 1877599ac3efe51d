/*
 * CPU cost of the trust gate per new upstream connection: chain and
 * hostname, pins, and CT, cold and with the verdict cache.  Not a test:
 * `make bench-gate` prints one line.  Data: the real google.com chain and
 * the 2025-08-21 Chrome list from tests/data/realworld, checked at that
 * date.  The TLS handshake's own cryptography is not included.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "stubborn/ct.h"
#include "stubborn/tls.h"
#include "stubborn/trust.h"

#define ROUNDS		300
#define CHECK_AT	1755780000	/* 2025-08-21T12:40:00Z */

static double
cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Chain + hostname + pins + CT once, as the handshake hook does. */
static bool
gate_once(X509_STORE *store, STACK_OF(X509) *chain, struct ct_loglist *list,
    const struct pin *pin, double *t)
{
	X509_STORE_CTX *x = X509_STORE_CTX_new();
	X509 *leaf = sk_X509_value(chain, 0);
	STACK_OF(X509) *verified;
	STACK_OF(SCT) *scts;
	struct ct_verdict v;
	double t0 = cpu_us(), t1, t2;
	bool ok;

	X509_STORE_CTX_init(x, store, leaf, chain);
	X509_STORE_CTX_set_default(x, "ssl_server");
	X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(x), CHECK_AT);
	X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(x),
	    "www.google.com", 0);
	ok = X509_verify_cert(x) == 1;
	verified = X509_STORE_CTX_get0_chain(x);
	t1 = cpu_us();
	/* A pin that matches nothing: every key of the chain is hashed. */
	ok = ok && trust_check_pins(verified, pin, 1) == TRUST_FAIL_PIN;
	t2 = cpu_us();
	scts = ct_embedded_scts(leaf);
	ct_evaluate(list, CT_POLICY_CHROME, leaf, sk_X509_value(verified, 1),
	    scts, (int64_t)CHECK_AT * 1000, &v);
	ok = ok && v.compliant;
	SCT_LIST_free(scts);
	t[0] += t1 - t0;
	t[1] += t2 - t1;
	t[2] += cpu_us() - t2;
	X509_STORE_CTX_free(x);
	return ok;
}

int
main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "tests/data/realworld";
	char path[1024];
	STACK_OF(X509) *chain = sk_X509_new_null();
	X509_STORE *store = X509_STORE_new();
	struct ct_loglist *list;
	struct pin pin;
	double cold[3] = { 0 }, warm[3] = { 0 };
	FILE *fp;
	X509 *c;
	int i;

	snprintf(path, sizeof(path), "%s/google-com-certs-chain.pem", dir);
	if ((fp = fopen(path, "r")) == NULL) {
		perror(path);
		return 2;
	}
	while ((c = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL)
		sk_X509_push(chain, c);
	fclose(fp);
	snprintf(path, sizeof(path), "%s/google-log-list.json", dir);
	if ((list = ct_loglist_load(path, stderr)) == NULL)
		return 2;
	tls_store_load(store, NULL);
	memset(&pin, 0x5a, sizeof(pin));
	for (i = 0; i < ROUNDS; i++) {
		ct_cache_clear();
		if (!gate_once(store, chain, list, &pin, cold)) {
			fprintf(stderr, "gate_bench: the gate did not behave "
			    "as expected (system store without GTS Root R1?)\n");
			return 1;
		}
	}
	for (i = 0; i < ROUNDS; i++)
		gate_once(store, chain, list, &pin, warm);
	printf("gate CPU per new connection (google.com chain, 2 SCTs, %d "
	    "rounds): cold %.0f us (chain+host %.0f, pins %.0f, CT %.0f); "
	    "with the verdict cache %.0f us (CT %.0f)\n", ROUNDS,
	    (cold[0] + cold[1] + cold[2]) / ROUNDS, cold[0] / ROUNDS,
	    cold[1] / ROUNDS, cold[2] / ROUNDS,
	    (warm[0] + warm[1] + warm[2]) / ROUNDS, warm[2] / ROUNDS);
	ct_loglist_free(list);
	X509_STORE_free(store);
	sk_X509_pop_free(chain, X509_free);
	return 0;
}
