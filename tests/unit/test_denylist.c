/* The deny list file: atomic adds, tolerant reads, and the gate's check. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "stubborn/denylist.h"

static char dir[] = "/tmp/stubborn-denylist-XXXXXX";
static char path[256];

static int
setup(void **state)
{
	(void)state;
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/%s", dir, DENYLIST_FILE);
	return 0;
}

static int
teardown(void **state)
{
	char lock[300];

	(void)state;
	snprintf(lock, sizeof(lock), "%s.lock", path);
	unlink(path);
	unlink(lock);
	return rmdir(dir);
}

static struct pin
key(uint8_t b)
{
	struct pin p;

	memset(p.sha256, b, sizeof(p.sha256));
	return p;
}

static void
add_and_load(void **state)
{
	struct pin a = key(1), b = key(2), *keys;
	size_t n;
	FILE *errs = tmpfile();

	(void)state;
	/* No file yet: an empty list, not an error. */
	assert_int_equal(denylist_load(path, &keys, &n, errs), 0);
	assert_int_equal(n, 0);
	assert_int_equal(denylist_add(path, &a, "upstream=x cert=ab"), 1);
	assert_int_equal(denylist_add(path, &a, "again"), 0);
	assert_int_equal(denylist_add(path, &b, ""), 1);
	assert_int_equal(denylist_load(path, &keys, &n, errs), 0);
	assert_int_equal(n, 2);
	assert_memory_equal(keys[0].sha256, a.sha256, TRUST_PIN_LEN);
	assert_memory_equal(keys[1].sha256, b.sha256, TRUST_PIN_LEN);
	free(keys);
	assert_int_equal(ftell(errs), 0);
	fclose(errs);
}

static void
corrupt_lines_are_skipped(void **state)
{
	struct pin c = key(3), *keys;
	char buf[512] = "";
	size_t n;
	FILE *fp, *errs = tmpfile();

	(void)state;
	/* A torn or hand-edited file: bad lines reported, the rest used. */
	fp = fopen(path, "a");
	fputs("garbage line\nsha256/short=\n", fp);
	fclose(fp);
	assert_int_equal(denylist_add(path, &c, "third"), 1);
	assert_int_equal(denylist_load(path, &keys, &n, errs), 0);
	assert_int_equal(n, 3);
	free(keys);
	rewind(errs);
	assert_non_null(fread(buf, 1, sizeof(buf) - 1, errs) > 0 ? buf : NULL);
	assert_non_null(strstr(buf, "not a key"));
	fclose(errs);
}

static void
nul_byte_keeps_next_line(void **state)
{
	static const char torn[] = "sha256/a\0\0\0 torn\n";
	struct pin d = key(4), *keys;
	size_t n;
	FILE *fp, *errs = tmpfile();

	(void)state;
	/* A torn write leaves NUL bytes: the line after them still counts. */
	fp = fopen(path, "w");
	fwrite(torn, 1, sizeof(torn) - 1, fp);
	fclose(fp);
	assert_int_equal(denylist_add(path, &d, "after"), 1);
	assert_int_equal(denylist_load(path, &keys, &n, errs), 0);
	assert_int_equal(n, 1);
	assert_memory_equal(keys[0].sha256, d.sha256, TRUST_PIN_LEN);
	free(keys);
	fclose(errs);
}

static void
gate_check(void **state)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	struct pin p, hit, *set;
	X509 *x;
	FILE *fp;

	(void)state;
	fp = fopen(TEST_DATA "/realworld/google-com-certs-chain.pem", "r");
	assert_non_null(fp);
	while ((x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL)
		sk_X509_push(chain, x);
	fclose(fp);
	assert_true(sk_X509_num(chain) >= 2);
	denylist_set(NULL, 0);
	assert_int_equal(denylist_check(chain, &hit), -1);
	/* Deny the intermediate's key: found at depth 1. */
	assert_int_equal(trust_pin_of_cert(sk_X509_value(chain, 1), &p), 0);
	set = malloc(2 * sizeof(*set));
	set[0] = key(9);
	set[1] = p;
	denylist_set(set, 2);
	assert_int_equal(denylist_count(), 2);
	assert_int_equal(denylist_check(chain, &hit), 1);
	assert_memory_equal(hit.sha256, p.sha256, TRUST_PIN_LEN);
	denylist_set(NULL, 0);
	assert_int_equal(denylist_check(chain, &hit), -1);
	sk_X509_pop_free(chain, X509_free);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(add_and_load),
		cmocka_unit_test(corrupt_lines_are_skipped),
		cmocka_unit_test(nul_byte_keeps_next_line),
		cmocka_unit_test(gate_check),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
