/*
 * CT: the chrome and apple policies on synthetic SCT sets (ct-notes.md
 * section 2.4's edge cases), the log list loader, and SCT checks on real
 * certificates with the real 2025-08-21 list (tests/data/realworld).
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "stubborn/ct.h"

#define DAY		86400LL
#define NOW_MS		(1800000000LL * 1000)	/* 2027-01-15 */
#define NB		(1800000000LL - 10 * DAY)	/* notBefore */
#define REALWORLD_AT	(1755780000LL * 1000)	/* 2025-08-21T12:40:00Z */

/* Logs A, B (operator 0), C (1), D (2); E retired; F moved 0 -> 1. */
static struct ct_prev_operator f_prev = { 0, NOW_MS - 5 * DAY * 1000 };
static struct ct_log logs[] = {
	{ .description = "A", .op = 0, .state = CT_LOG_USABLE },
	{ .description = "B", .op = 0, .state = CT_LOG_QUALIFIED },
	{ .description = "C", .op = 1, .state = CT_LOG_READONLY },
	{ .description = "D", .op = 2, .state = CT_LOG_USABLE },
	{ .description = "E", .op = 2, .state = CT_LOG_RETIRED,
	    .state_ms = NOW_MS - 20 * DAY * 1000 },
	{ .description = "F", .op = 1, .state = CT_LOG_USABLE,
	    .prev = &f_prev, .nprev = 1 },
	{ .description = "G", .op = 1, .state = CT_LOG_RETIRED,
	    .state_ms = NOW_MS - 20 * DAY * 1000 },
};
enum { A, B, C, D, E, F, G };

/* An SCT from log l, age_days old, of source src. */
static struct ct_sct
sct(int l, int age_days, enum ct_source src)
{
	struct ct_sct s = {
		.source = src,
		.timestamp_ms = NOW_MS - age_days * DAY * 1000,
		.log = &logs[l],
		.status = CT_SCT_VALID,
	};

	return s;
}

static bool
chrome(const struct ct_sct *s, size_t n, long long lifetime)
{
	char why[320];

	return ct_policy_compliant(CT_POLICY_CHROME, s, n, NB, NB + lifetime,
	    NOW_MS, why, sizeof(why));
}

static bool
apple(const struct ct_sct *s, size_t n, long long lifetime)
{
	char why[320];

	return ct_policy_compliant(CT_POLICY_APPLE, s, n, NB, NB + lifetime,
	    NOW_MS, why, sizeof(why));
}

static void
chrome_counts_logs_and_operators(void **state)
{
	struct ct_sct s[3];

	(void)state;
	s[0] = sct(A, 10, CT_SRC_EMBEDDED);
	s[1] = sct(C, 10, CT_SRC_EMBEDDED);
	assert_true(chrome(s, 2, 90 * DAY));
	/* Exactly 180 days needs 2; a second more needs 3. */
	assert_true(chrome(s, 2, 180 * DAY));
	assert_false(chrome(s, 2, 180 * DAY + 1));
	s[2] = sct(B, 10, CT_SRC_EMBEDDED);
	assert_true(chrome(s, 3, 200 * DAY));	/* 3 logs, 2 operators */
	/* Two logs of one operator are not enough. */
	s[1] = sct(B, 10, CT_SRC_EMBEDDED);
	assert_false(chrome(s, 2, 90 * DAY));
	/* Nor is one SCT, or none. */
	assert_false(chrome(s, 1, 90 * DAY));
	assert_false(chrome(s, 0, 90 * DAY));
}

static void
chrome_same_log_counts_once(void **state)
{
	struct ct_sct s[3];

	(void)state;
	s[0] = sct(A, 10, CT_SRC_EMBEDDED);
	s[1] = sct(A, 9, CT_SRC_EMBEDDED);
	s[2] = sct(A, 8, CT_SRC_TLS);
	assert_false(chrome(s, 3, 90 * DAY));
}

static void
chrome_only_valid_scts_count(void **state)
{
	struct ct_sct s[2];
	static const enum ct_sct_status bad[] = {
		CT_SCT_INVALID, CT_SCT_UNKNOWN_LOG, CT_SCT_FUTURE,
		CT_SCT_UNVERIFIED,
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		s[0] = sct(A, 10, CT_SRC_EMBEDDED);
		s[1] = sct(C, 10, CT_SRC_EMBEDDED);
		s[1].status = bad[i];
		if (bad[i] == CT_SCT_UNKNOWN_LOG)
			s[1].log = NULL;
		assert_false(chrome(s, 2, 90 * DAY));
	}
}

static void
chrome_retired_logs(void **state)
{
	struct ct_sct s[2];

	(void)state;
	/* E retired 20 days ago: an SCT from before counts (embedded)... */
	s[0] = sct(A, 30, CT_SRC_EMBEDDED);
	s[1] = sct(E, 30, CT_SRC_EMBEDDED);
	assert_true(chrome(s, 2, 90 * DAY));
	/* ...one from after does not (the earliest SCT decides)... */
	s[0] = sct(A, 10, CT_SRC_EMBEDDED);
	s[1] = sct(E, 10, CT_SRC_EMBEDDED);
	assert_false(chrome(s, 2, 90 * DAY));
	/* ...only retired logs fail the "one current log" rule... */
	s[0] = sct(G, 30, CT_SRC_EMBEDDED);
	s[1] = sct(E, 30, CT_SRC_EMBEDDED);
	assert_false(chrome(s, 2, 90 * DAY));
	/* ...and a TLS SCT from a retired log never counts. */
	s[0] = sct(A, 30, CT_SRC_TLS);
	s[1] = sct(E, 30, CT_SRC_TLS);
	assert_false(chrome(s, 2, 90 * DAY));
}

static void
chrome_tls_and_ocsp(void **state)
{
	struct ct_sct s[2];

	(void)state;
	s[0] = sct(A, 10, CT_SRC_TLS);
	s[1] = sct(D, 10, CT_SRC_TLS);
	assert_true(chrome(s, 2, 400 * DAY));	/* no lifetime rule */
	/* Chrome 148 stopped counting SCTs from stapled OCSP. */
	s[1] = sct(D, 10, CT_SRC_OCSP);
	assert_false(chrome(s, 2, 90 * DAY));
	/* Embedded and TLS SCTs are separate paths, not added up. */
	s[1] = sct(D, 10, CT_SRC_EMBEDDED);
	assert_false(chrome(s, 2, 90 * DAY));
}

static void
chrome_previous_operator(void **state)
{
	struct ct_sct s[2];

	(void)state;
	/* F belonged to operator 0 until 5 days ago, like A. */
	s[0] = sct(A, 10, CT_SRC_EMBEDDED);
	s[1] = sct(F, 10, CT_SRC_EMBEDDED);
	assert_int_equal(ct_log_operator_at(&logs[F], s[1].timestamp_ms), 0);
	assert_false(chrome(s, 2, 90 * DAY));
	s[1] = sct(F, 2, CT_SRC_EMBEDDED);
	assert_int_equal(ct_log_operator_at(&logs[F], s[1].timestamp_ms), 1);
	assert_true(chrome(s, 2, 90 * DAY));
}

static void
apple_policy(void **state)
{
	struct ct_sct s[3];

	(void)state;
	s[0] = sct(A, 10, CT_SRC_EMBEDDED);
	s[1] = sct(C, 10, CT_SRC_EMBEDDED);
	assert_true(apple(s, 2, 90 * DAY));
	/* Up to 180 days one log per operator counts. */
	s[1] = sct(B, 10, CT_SRC_EMBEDDED);
	assert_false(apple(s, 2, 90 * DAY));
	/* 181 to 398 days: 3 logs, at most 2 per operator. */
	s[1] = sct(B, 10, CT_SRC_EMBEDDED);
	s[2] = sct(C, 10, CT_SRC_EMBEDDED);
	assert_true(apple(s, 3, 200 * DAY));
	s[2] = sct(A, 9, CT_SRC_EMBEDDED);
	assert_false(apple(s, 3, 200 * DAY));
	/* Over 398 days is never compliant. */
	s[2] = sct(D, 10, CT_SRC_EMBEDDED);
	assert_false(apple(s, 3, 399 * DAY));
	/* Two current logs, one SCT delivered in the handshake. */
	s[0] = sct(A, 10, CT_SRC_EMBEDDED);
	s[1] = sct(B, 10, CT_SRC_TLS);
	assert_true(apple(s, 2, 300 * DAY));
	/* A once-approved (retired) log counts for the embedded path. */
	s[0] = sct(A, 30, CT_SRC_EMBEDDED);
	s[1] = sct(E, 30, CT_SRC_EMBEDDED);
	assert_true(apple(s, 2, 90 * DAY));
	s[1] = sct(E, 10, CT_SRC_EMBEDDED);
	assert_false(apple(s, 2, 90 * DAY));
}

static void
http_date(void **state)
{
	static const char *const bad[] = {
		/* The weekday is the date's; the day exists; exact blanks. */
		"Mon, 06 Nov 1994 08:49:37 GMT",
		"unM, 06 Nov 1994 08:49:37 GMT",
		"Sat, 31 Feb 2024 00:00:00 GMT",
		"Sun,06 Nov 1994 08:49:37 GMT ",
		"Sun, 06 Nov 1994 08:49:37GMT ",
		"Sun, +6 Nov 1994 08:49:37 GMT",
		"Sun, 06 nov 1994 08:49:37 GMT",
		"Sun, 06 Nov 1994 24:49:37 GMT",
		"Sun, 06 Nov 1994 08:49:37 UTC",
		"Sun, 06 Nov 1994 08:49:37 GMTx",
		/* The obsolete forms (RFC 850, asctime) are not taken. */
		"Sunday, 06-Nov-94 08:49:37 GMT",
		"Sun Nov  6 08:49:37 1994",
		"",
	};
	int64_t ms;
	size_t i;

	(void)state;
	assert_int_equal(ct_parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT",
	    &ms), 0);
	assert_int_equal(ms, 784111777000LL);
	assert_int_equal(ct_parse_http_date("Thu, 21 Aug 2025 12:40:00 GMT \r",
	    &ms), 0);
	assert_int_equal(ms, REALWORLD_AT);
	assert_int_equal(ct_parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT",
	    &ms), 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (ct_parse_http_date(bad[i], &ms) != -1)
			fail_msg("taken: '%s'", bad[i]);
}

static void
rfc3339(void **state)
{
	int64_t ms;
	char buf[40];

	(void)state;
	assert_int_equal(ct_parse_rfc3339("2025-08-21T12:40:00Z", &ms), 0);
	assert_int_equal(ms, REALWORLD_AT);
	assert_string_equal(ct_format_time(ms, buf, sizeof(buf)),
	    "2025-08-21T12:40:00Z");
	assert_int_equal(ct_parse_rfc3339("2025-08-21T14:40:00.5+02:00", &ms),
	    0);
	assert_int_equal(ms, REALWORLD_AT + 500);
	assert_int_equal(ct_parse_rfc3339("2025-08-21 12:40:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2025-08-21T12:40:00", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2025-08-21T12:40:00Zx", &ms), -1);
	/* Lower-case t and z (RFC 3339 5.6 NOTE); a leap second. */
	assert_int_equal(ct_parse_rfc3339("2025-08-21t12:40:00z", &ms), 0);
	assert_int_equal(ms, REALWORLD_AT);
	assert_int_equal(ct_parse_rfc3339("2016-12-31T23:59:60Z", &ms), 0);
	assert_int_equal(ms, 1483228800000LL);	/* 2017-01-01T00:00:00Z */
	assert_int_equal(ct_parse_rfc3339("2024-02-29T00:00:00Z", &ms), 0);
	assert_int_equal(ct_parse_rfc3339("2000-02-29T00:00:00Z", &ms), 0);
	/* Out of range, never normalised into another date. */
	assert_int_equal(ct_parse_rfc3339("2027-02-29T00:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("1900-02-29T00:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2027-02-31T00:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-11-31T12:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-00T12:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-13-01T12:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-02T24:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-02T10:60:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-02T10:00:61Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-02T10:00:00+25:00", &ms),
	    -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-02T10:00:00+01:99", &ms),
	    -1);
	assert_int_equal(ct_parse_rfc3339("2026-12-02T10:00:00.Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339(" 2026-12-02T10:00:00Z", &ms), -1);
	assert_int_equal(ct_parse_rfc3339("2026-1-02T10:00:00Z", &ms), -1);
}

/* A v3 list with a fresh key per log; bad entries made on purpose. */
static char *
make_list(void)
{
	char *json = NULL, keys[3][200], ids[3][48];
	size_t len;
	FILE *fp = open_memstream(&json, &len);

	for (int i = 0; i < 3; i++) {
		EVP_PKEY *k = EVP_EC_gen("P-256");
		unsigned char *der = NULL, md[32];
		int n = i2d_PUBKEY(k, &der);

		EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL);
		EVP_EncodeBlock((unsigned char *)keys[i], der, n);
		EVP_EncodeBlock((unsigned char *)ids[i], md, 32);
		OPENSSL_free(der);
		EVP_PKEY_free(k);
	}
	fprintf(fp, "{\"version\": \"1.0\", "
	    "\"log_list_timestamp\": \"2025-08-21T12:00:00Z\", "
	    "\"operators\": ["
	    "{\"name\": \"Op1\", \"logs\": ["
	    " {\"description\": \"good\", \"log_id\": \"%s\", \"key\": \"%s\","
	    "  \"state\": {\"usable\": {\"timestamp\": \"2024-01-01T00:00:00Z\"}}},"
	    " {\"description\": \"wrong id\", \"log_id\": \"%s\", \"key\": \"%s\","
	    "  \"state\": {\"usable\": {\"timestamp\": \"2024-01-01T00:00:00Z\"}}},"
	    " {\"description\": \"bad key\", \"key\": \"AAAA\","
	    "  \"state\": {\"usable\": {\"timestamp\": \"2024-01-01T00:00:00Z\"}}}"
	    "]},"
	    "{\"name\": \"Op2\", \"tiled_logs\": ["
	    " {\"description\": \"tiled\", \"log_id\": \"%s\", \"key\": \"%s\","
	    "  \"state\": {\"retired\": {\"timestamp\": \"2025-01-01T00:00:00Z\"}},"
	    "  \"previous_operators\": [{\"name\": \"Op0\","
	    "   \"end_time\": \"2024-06-01T00:00:00Z\"}]},"
	    " {\"description\": \"odd state\", \"log_id\": \"%s\", \"key\": \"%s\","
	    "  \"state\": {\"sleepy\": {\"timestamp\": \"2024-01-01T00:00:00Z\"}}}"
	    "]}]}", ids[0], keys[0], ids[0], keys[1], ids[2], keys[2], ids[1],
	    keys[1]);
	fclose(fp);
	return json;
}

static void
loglist_parse(void **state)
{
	char *json = make_list(), *errs = NULL;
	size_t len;
	FILE *fp = open_memstream(&errs, &len);
	struct ct_loglist *list;

	(void)state;
	list = ct_loglist_parse(json, strlen(json), "list.json", fp);
	fclose(fp);
	assert_non_null(list);
	/* The good and the tiled log load; each bad one is named. */
	assert_int_equal(list->nlogs, 2);
	assert_string_equal(list->logs[0].description, "good");
	assert_false(list->logs[0].tiled);
	assert_string_equal(list->logs[1].description, "tiled");
	assert_true(list->logs[1].tiled);
	assert_int_equal(list->logs[1].state, CT_LOG_RETIRED);
	assert_string_equal(list->operators[list->logs[1].op], "Op2");
	assert_int_equal(list->logs[1].nprev, 1);
	assert_string_equal(list->operators[list->logs[1].prev[0].op], "Op0");
	assert_int_equal(list->timestamp_ms, REALWORLD_AT - 40 * 60 * 1000);
	assert_string_equal(list->version, "1.0");
	assert_non_null(strstr(errs, "log 'wrong id': log_id is not the "
	    "SHA-256 of its key"));
	assert_non_null(strstr(errs, "log 'bad key'"));
	assert_non_null(strstr(errs, "log 'odd state': unknown state"));
	assert_non_null(ct_loglist_find(list, list->logs[0].id, 32));
	assert_null(ct_loglist_find(list, list->logs[0].id, 31));
	ct_loglist_free(list);
	free(errs);
	free(json);
}

static void
loglist_rejects(void **state)
{
	static const char *const bad[] = {
		"", "{", "[]", "{\"operators\": 5}", "{\"operators\": []}",
		"{\"operators\": [{\"name\": \"x\", \"logs\": [{}]}]}",
		"{\"operators\": [], \"operators\": []}",
	};
	char *errs = NULL;
	size_t len;
	FILE *fp = open_memstream(&errs, &len);

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct ct_loglist *l = ct_loglist_parse(bad[i], strlen(bad[i]),
		    "bad.json", fp);

		if (l != NULL)
			fail_msg("accepted list '%s'", bad[i]);
	}
	fclose(fp);
	assert_non_null(strstr(errs, "bad.json"));
	free(errs);
}

static STACK_OF(X509) *
read_chain(const char *name)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	char path[512];
	FILE *fp;
	X509 *x;

	snprintf(path, sizeof(path), "%s/realworld/%s", TEST_DATA, name);
	assert_non_null(fp = fopen(path, "r"));
	while ((x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL)
		sk_X509_push(sk, x);
	fclose(fp);
	assert_true(sk_X509_num(sk) >= 2);
	return sk;
}

/* Retire every log a day after the SCTs: they stop counting. */
static bool
chrome_at_retired_time(struct ct_loglist *list, X509 *leaf, X509 *issuer,
    STACK_OF(SCT) *scts)
{
	struct ct_verdict v;
	enum ct_log_state saved[64];
	int64_t saved_ms[64];
	size_t i;
	unsigned long hits = ct_cache_stats()->hits;

	for (i = 0; i < list->nlogs && i < 64; i++) {
		saved[i] = list->logs[i].state;
		saved_ms[i] = list->logs[i].state_ms;
		list->logs[i].state = CT_LOG_RETIRED;
		list->logs[i].state_ms = REALWORLD_AT - 40 * DAY * 1000;
	}
	ct_evaluate(list, CT_POLICY_CHROME, leaf, issuer, scts, REALWORLD_AT,
	    &v);
	for (i = 0; i < list->nlogs && i < 64; i++) {
		list->logs[i].state = saved[i];
		list->logs[i].state_ms = saved_ms[i];
	}
	return ct_cache_stats()->hits == hits + 1 && !v.compliant;
}

static void
realworld_scts(void **state)
{
	STACK_OF(X509) *chain = read_chain("google-com-certs-chain.pem");
	X509 *leaf = sk_X509_value(chain, 0), *issuer = sk_X509_value(chain, 1);
	STACK_OF(SCT) *scts = ct_embedded_scts(leaf);
	struct ct_loglist *list;
	struct ct_verdict v;
	struct ct_sct out[8];
	char *errs = NULL;
	size_t len, n;
	FILE *fp = open_memstream(&errs, &len);

	(void)state;
	list = ct_loglist_load(TEST_DATA "/realworld/google-log-list.json", fp);
	fclose(fp);
	assert_non_null(list);
	assert_int_equal(list->nlogs, 45);
	assert_int_equal(sk_SCT_num(scts), 2);

	ct_evaluate(list, CT_POLICY_CHROME, leaf, issuer, scts, REALWORLD_AT,
	    &v);
	assert_int_equal(v.nscts, 2);
	for (size_t i = 0; i < v.nscts; i++) {
		assert_int_equal(v.scts[i].status, CT_SCT_VALID);
		assert_int_equal(v.scts[i].source, CT_SRC_EMBEDDED);
		assert_non_null(v.scts[i].log);
	}
	assert_true(v.compliant);

	/* The same certificate again: the SCT checks come from the cache. */
	ct_cache_clear();
	ct_evaluate(list, CT_POLICY_CHROME, leaf, issuer, scts, REALWORLD_AT,
	    &v);
	assert_int_equal(ct_cache_stats()->misses, 1);
	ct_evaluate(list, CT_POLICY_CHROME, leaf, issuer, scts, REALWORLD_AT,
	    &v);
	assert_int_equal(ct_cache_stats()->hits, 1);
	assert_true(v.compliant);
	assert_int_equal(v.nscts, 2);
	assert_int_equal(v.scts[1].status, CT_SCT_VALID);
	/* ...but the policy runs anew: years later the logs are retired. */
	assert_true(chrome_at_retired_time(list, leaf, issuer, scts));
	/* Another issuer is another key: checked again, and it fails. */
	ct_evaluate(list, CT_POLICY_CHROME, leaf, leaf, scts, REALWORLD_AT,
	    &v);
	assert_int_equal(ct_cache_stats()->misses, 2);
	assert_false(v.compliant);

	/* Without the issuer a precert SCT cannot be checked... */
	n = ct_check_scts(list, leaf, NULL, scts, REALWORLD_AT, out, 8);
	assert_int_equal(n, 2);
	assert_int_equal(out[0].status, CT_SCT_UNVERIFIED);
	/* ...with the wrong one its signature fails (issuer_key_hash)... */
	n = ct_check_scts(list, leaf, leaf, scts, REALWORLD_AT, out, 8);
	assert_int_equal(out[0].status, CT_SCT_INVALID);
	assert_int_equal(out[1].status, CT_SCT_INVALID);
	/* ...before its timestamp it is from the future... */
	n = ct_check_scts(list, leaf, issuer, scts,
	    out[0].timestamp_ms - 1000, out, 8);
	assert_int_equal(out[0].status, CT_SCT_FUTURE);
	/* ...and against a list without its log it is unknown. */
	n = ct_check_scts(NULL, leaf, issuer, scts, REALWORLD_AT, out, 8);
	assert_int_equal(out[0].status, CT_SCT_UNKNOWN_LOG);
	assert_null(out[0].log);
	/* One SCT: never compliant. */
	ct_evaluate(list, CT_POLICY_CHROME, sk_X509_value(chain, 1),
	    sk_X509_value(chain, 2), NULL, REALWORLD_AT, &v);
	assert_false(v.compliant);

	SCT_LIST_free(scts);
	ct_loglist_free(list);
	sk_X509_pop_free(chain, X509_free);
	free(errs);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(chrome_counts_logs_and_operators),
		cmocka_unit_test(chrome_same_log_counts_once),
		cmocka_unit_test(chrome_only_valid_scts_count),
		cmocka_unit_test(chrome_retired_logs),
		cmocka_unit_test(chrome_tls_and_ocsp),
		cmocka_unit_test(chrome_previous_operator),
		cmocka_unit_test(apple_policy),
		cmocka_unit_test(http_date),
		cmocka_unit_test(rfc3339),
		cmocka_unit_test(loglist_parse),
		cmocka_unit_test(loglist_rejects),
		cmocka_unit_test(realworld_scts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
