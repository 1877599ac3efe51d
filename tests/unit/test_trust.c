/* Pins, the pin step of the gate, and the incident record. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "stubborn/trust.h"

/* Computed with the openssl CLI: x509 -pubkey | pkey -outform der | dgst. */
#define LEAF_PIN	"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis="
#define CA_PIN		"sha256/uO9Qk3o9wh7DfQXIu0yaf/emz/XSj4LEZL6iVzC3GU0="
#define OTHER_PIN	"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
#define LEAF_SHA256	\
	"7debf087f36502ace74dcc7afc4346c2923123465a69800b0001cf0f91cf14f2"

static X509 *
load_cert(const char *name)
{
	char path[512];
	FILE *fp;
	X509 *x;

	snprintf(path, sizeof(path), "%s/%s", TEST_DATA, name);
	fp = fopen(path, "r");
	assert_non_null(fp);
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(x);
	return x;
}

static void
pin_parse_format(void **state)
{
	struct pin p;
	char buf[TRUST_PIN_STR_MAX];

	(void)state;
	assert_int_equal(trust_pin_parse(LEAF_PIN, &p), 0);
	trust_pin_format(&p, buf, sizeof(buf));
	assert_string_equal(buf, LEAF_PIN);
	assert_int_equal(trust_pin_parse(OTHER_PIN, &p), 0);
	for (size_t i = 0; i < TRUST_PIN_LEN; i++)
		assert_int_equal(p.sha256[i], 0);
}

static void
pin_parse_rejects(void **state)
{
	static const char *const bad[] = {
		"",
		"sha256/",
		"kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis=",
		"sha1/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis=",
		"SHA256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis=",
		"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHi=",
		"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis",
		"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis==",
		"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzk!is=",
		"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkH==",
		"sha256/kc8LD/cdtIwfu2vnECXKyoohp3hafGnXWMdeiMzkHis= ",
	};
	struct pin p;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (trust_pin_parse(bad[i], &p) == 0)
			fail_msg("accepted bad pin '%s'", bad[i]);
	}
}

static void
pin_of_cert(void **state)
{
	X509 *leaf = load_cert("leaf.pem"), *ca = load_cert("ca.pem");
	struct pin p, want;

	(void)state;
	assert_int_equal(trust_pin_of_cert(leaf, &p), 0);
	assert_int_equal(trust_pin_parse(LEAF_PIN, &want), 0);
	assert_memory_equal(p.sha256, want.sha256, TRUST_PIN_LEN);
	assert_int_equal(trust_pin_of_cert(ca, &p), 0);
	assert_int_equal(trust_pin_parse(CA_PIN, &want), 0);
	assert_memory_equal(p.sha256, want.sha256, TRUST_PIN_LEN);
	X509_free(leaf);
	X509_free(ca);
}

static void
pin_match(void **state)
{
	struct pin set[3], p;

	(void)state;
	assert_int_equal(trust_pin_parse(OTHER_PIN, &set[0]), 0);
	assert_int_equal(trust_pin_parse(CA_PIN, &set[1]), 0);
	assert_int_equal(trust_pin_parse(LEAF_PIN, &set[2]), 0);
	assert_true(trust_pin_match(set, 3, &set[2]));
	assert_true(trust_pin_match(set, 2, &set[1]));
	assert_false(trust_pin_match(set, 2, &set[2]));
	assert_false(trust_pin_match(set, 0, &set[0]));
	p = set[2];
	p.sha256[31] ^= 1;	/* one bit off is no match */
	assert_false(trust_pin_match(set, 3, &p));
}

static void
check_pins_on_chain(void **state)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	X509 *leaf = load_cert("leaf.pem"), *ca = load_cert("ca.pem");
	struct pin leafpin, capin, other;

	(void)state;
	sk_X509_push(chain, leaf);
	sk_X509_push(chain, ca);
	trust_pin_parse(LEAF_PIN, &leafpin);
	trust_pin_parse(CA_PIN, &capin);
	trust_pin_parse(OTHER_PIN, &other);
	/* No pins: the step passes (and the caller logs that it skipped). */
	assert_int_equal(trust_check_pins(chain, NULL, 0), TRUST_OK);
	assert_int_equal(trust_check_pins(chain, &leafpin, 1), TRUST_OK);
	/* An issuer's key pinned survives leaf rotation. */
	assert_int_equal(trust_check_pins(chain, &capin, 1), TRUST_OK);
	assert_int_equal(trust_check_pins(chain, &other, 1), TRUST_FAIL_PIN);
	assert_int_equal(trust_check_pins(NULL, &other, 1), TRUST_FAIL_PIN);
	sk_X509_pop_free(chain, X509_free);
}

static void
incident_json(void **state)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	X509 *leaf = load_cert("leaf.pem"), *ca = load_cert("ca.pem");
	struct trust_incident inc = {
		.upstream = "rogue", .host = "dns.test",
		.address = "127.0.0.2:853", .verdict = TRUST_FAIL_PIN,
		.detail = "no key of the verified chain is pinned",
		.leaf = leaf, .presented = chain, .quarantine_sec = 3600,
	};
	json_error_t err;
	json_t *o, *sans, *pins;
	char *s;

	(void)state;
	sk_X509_push(chain, leaf);
	X509_up_ref(leaf);
	sk_X509_push(chain, ca);
	s = trust_incident_json(&inc);
	assert_non_null(s);
	assert_null(strchr(s, '\n'));	/* one log line */
	o = json_loads(s, 0, &err);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "event")),
	    "trust-incident");
	assert_string_equal(json_string_value(json_object_get(o, "reason")),
	    "pin");
	assert_string_equal(json_string_value(json_object_get(o, "upstream")),
	    "rogue");
	assert_string_equal(json_string_value(json_object_get(o, "address")),
	    "127.0.0.2:853");
	assert_string_equal(json_string_value(json_object_get(o, "spki_pin")),
	    LEAF_PIN);
	assert_string_equal(json_string_value(json_object_get(o,
	    "leaf_sha256")), LEAF_SHA256);
	assert_non_null(strstr(json_string_value(json_object_get(o, "issuer")),
	    "stubborn unit CA"));
	assert_non_null(strstr(json_string_value(json_object_get(o,
	    "subject")), "dns.test"));
	sans = json_object_get(o, "sans");
	assert_int_equal(json_array_size(sans), 2);
	assert_string_equal(json_string_value(json_array_get(sans, 0)),
	    "DNS:dns.test");
	assert_string_equal(json_string_value(json_array_get(sans, 1)),
	    "IP:192.0.2.1");
	pins = json_object_get(o, "chain_pins");
	assert_int_equal(json_array_size(pins), 2);
	assert_string_equal(json_string_value(json_array_get(pins, 1)), CA_PIN);
	assert_int_equal(json_integer_value(json_object_get(o,
	    "quarantine_seconds")), 3600);
	json_decref(o);
	free(s);
	sk_X509_pop_free(chain, X509_free);
	X509_free(leaf);
}

/* A SAN with a NUL or bytes that are not UTF-8 is evidence all the same. */
static void
incident_json_escapes_sans(void **state)
{
	static const unsigned char nul[] = "dns.test\0.evil.test";
	static const unsigned char bad[] = "dns.te\xffst";
	unsigned char longname[400];
	X509 *leaf = load_cert("leaf.pem");
	GENERAL_NAMES *gens = GENERAL_NAMES_new();
	const unsigned char *names[] = { nul, bad, longname };
	const int lens[] = { sizeof(nul) - 1, sizeof(bad) - 1,
	    sizeof(longname) };
	const char *s3;
	struct trust_incident inc = {
		.upstream = "rogue", .host = "dns.test",
		.address = "127.0.0.2:853", .verdict = TRUST_FAIL_HOSTNAME,
		.detail = "no SAN matches", .leaf = leaf,
		.report_only = true, .quarantine_sec = 3600,
	};
	json_error_t err;
	json_t *o, *sans;
	char *s;
	int i;

	(void)state;
	memset(longname, 'a', sizeof(longname));
	for (i = 0; i < 3; i++) {
		GENERAL_NAME *g = GENERAL_NAME_new();
		ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();

		assert_int_equal(ASN1_STRING_set(ia5, names[i], lens[i]), 1);
		GENERAL_NAME_set0_value(g, GEN_DNS, ia5);
		sk_GENERAL_NAME_push(gens, g);
	}
	assert_int_equal(X509_add1_ext_i2d(leaf, NID_subject_alt_name, gens,
	    0, X509V3_ADD_REPLACE), 1);
	GENERAL_NAMES_free(gens);
	s = trust_incident_json(&inc);
	assert_non_null(s);
	o = json_loads(s, 0, &err);
	assert_non_null(o);
	sans = json_object_get(o, "sans");
	assert_int_equal(json_array_size(sans), 3);
	assert_string_equal(json_string_value(json_array_get(sans, 0)),
	    "DNS:dns.test\\x00.evil.test");
	/* Too long to keep whole: cut, and marked so. */
	s3 = json_string_value(json_array_get(sans, 2));
	assert_non_null(s3);
	assert_true(strlen(s3) < 300);
	assert_string_equal(s3 + strlen(s3) - 4, "\\...");
	assert_string_equal(json_string_value(json_array_get(sans, 1)),
	    "DNS:dns.te\\xffst");
	/* Reported only: nothing was quarantined. */
	assert_int_equal(json_integer_value(json_object_get(o,
	    "quarantine_seconds")), 0);
	json_decref(o);
	free(s);
	X509_free(leaf);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(pin_parse_format),
		cmocka_unit_test(pin_parse_rejects),
		cmocka_unit_test(pin_of_cert),
		cmocka_unit_test(pin_match),
		cmocka_unit_test(check_pins_on_chain),
		cmocka_unit_test(incident_json),
		cmocka_unit_test(incident_json_escapes_sans),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
