/* The answer cache: keys, TTL ageing, negative answers, LRU, stale. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "stubborn/cache.h"
#include "stubborn/dnsmsg.h"

#define T0	1000000ULL	/* ms */

/* A query for name (dotted, no trailing dot) type 1 class IN. */
static size_t
query(const char *name, uint8_t *m)
{
	size_t n = 12;

	memset(m, 0, 12);
	m[2] = 0x01;
	m[5] = 1;
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);

		m[n++] = (uint8_t)l;
		memcpy(m + n, name, l);
		n += l;
		name += l + (dot ? 1 : 0);
	}
	m[n++] = 0;
	m[n++] = 0;
	m[n++] = 1;
	m[n++] = 0;
	m[n++] = 1;
	return n;
}

/* Answer to q: one A record with ttl, or rcode with an SOA (ttl/min). */
static size_t
answer(const uint8_t *q, size_t qlen, int rcode, uint32_t ttl, uint32_t min,
    uint8_t *m)
{
	size_t n = qlen;

	memcpy(m, q, qlen);
	m[2] |= 0x80;
	m[3] = (uint8_t)(0x80 | rcode);
	if (rcode == 0 && min == 0) {
		static const uint8_t rr[] = { 0xc0, 12, 0, 1, 0, 1 };

		m[7] = 1;
		memcpy(m + n, rr, sizeof(rr));
		n += sizeof(rr);
		m[n++] = (uint8_t)(ttl >> 24);
		m[n++] = (uint8_t)(ttl >> 16);
		m[n++] = (uint8_t)(ttl >> 8);
		m[n++] = (uint8_t)ttl;
		m[n++] = 0;
		m[n++] = 4;
		memcpy(m + n, "\xc0\x00\x02\x01", 4);
		n += 4;
	} else {
		/* SOA at the root of the name: mname . rname . 5 numbers. */
		static const uint8_t soa[] = { 0xc0, 12, 0, 6, 0, 1 };
		size_t i;

		m[9] = 1;
		memcpy(m + n, soa, sizeof(soa));
		n += sizeof(soa);
		for (i = 0; i < 4; i++)
			m[n++] = (uint8_t)(ttl >> (24 - 8 * i));
		m[n++] = 0;
		m[n++] = 22;
		m[n++] = 0;	/* mname . */
		m[n++] = 0;	/* rname . */
		for (i = 0; i < 16; i++)
			m[n++] = 0;	/* serial refresh retry expire */
		for (i = 0; i < 4; i++)
			m[n++] = (uint8_t)(min >> (24 - 8 * i));
	}
	return n;
}

static uint32_t
ttl_at(const uint8_t *m, size_t qlen)
{
	const uint8_t *p = m + qlen + 6;

	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static void
key_ignores_case_not_bits(void **state)
{
	uint8_t a[300], b[300];
	struct cache_key ka, kb;
	size_t la = query("www.Example.COM", a), lb = query("WWW.example.com", b);

	(void)state;
	assert_int_equal(cache_key_make(a, la, false, &ka), 0);
	assert_int_equal(cache_key_make(b, lb, false, &kb), 0);
	assert_true(cache_key_equal(&ka, &kb));
	/* DO, CD and RD make another key. */
	assert_int_equal(cache_key_make(b, lb, true, &kb), 0);
	assert_false(cache_key_equal(&ka, &kb));
	b[3] |= 0x10;
	assert_int_equal(cache_key_make(b, lb, false, &kb), 0);
	assert_false(cache_key_equal(&ka, &kb));
	b[3] &= (uint8_t)~0x10;
	b[2] ^= 0x01;
	assert_int_equal(cache_key_make(b, lb, false, &kb), 0);
	assert_false(cache_key_equal(&ka, &kb));
	b[2] ^= 0x01;
	assert_int_equal(cache_key_make(b, lb, false, &kb), 0);
	assert_true(cache_key_equal(&ka, &kb));
	b[lb - 3] = 28;	/* AAAA */
	assert_int_equal(cache_key_make(b, lb, false, &kb), 0);
	assert_false(cache_key_equal(&ka, &kb));
}

static void
ttl_counts_down(void **state)
{
	struct cache *c = cache_new(10, 86400, 0);
	uint8_t q[300], a[512], out[512];
	size_t ql = query("a.test", q), al = answer(q, ql, 0, 300, 0, a);
	struct cache_key k;

	(void)state;
	cache_key_make(q, ql, false, &k);
	assert_int_equal(cache_lookup(c, &k, T0, false, out, sizeof(out)), 0);
	assert_true(cache_store(c, &k, a, al, T0));
	assert_int_equal(cache_lookup(c, &k, T0 + 999, false, out,
	    sizeof(out)), al);
	assert_int_equal(ttl_at(out, ql), 300);
	assert_int_equal(cache_lookup(c, &k, T0 + 100500, false, out,
	    sizeof(out)), al);
	assert_int_equal(ttl_at(out, ql), 200);
	assert_memory_equal(out + 12, a + 12, ql - 12);
	/* Expired: gone. */
	assert_int_equal(cache_lookup(c, &k, T0 + 300000, false, out,
	    sizeof(out)), 0);
	assert_int_equal(cache_count(c), 0);
	cache_free(c);
}

/* A cache holding answer a under k since T0, then reloaded with limits. */
static struct cache *
stored_then_limited(const struct cache_key *k, const uint8_t *a, size_t al,
    uint32_t max_ttl, uint32_t serve_stale)
{
	struct cache *c = cache_new(10, 86400, 0);

	assert_true(cache_store(c, k, a, al, T0));
	cache_set_limits(c, max_ttl, serve_stale);
	return c;
}

static void
max_ttl_clamps(void **state)
{
	struct cache *c = cache_new(10, 10, 0);
	uint8_t q[300], a[512], out[512];
	size_t ql = query("a.test", q), al = answer(q, ql, 0, 300, 0, a);
	struct cache_key k;

	(void)state;
	cache_key_make(q, ql, false, &k);
	assert_true(cache_store(c, &k, a, al, T0));
	cache_lookup(c, &k, T0 + 3000, false, out, sizeof(out));
	assert_int_equal(ttl_at(out, ql), 7);
	assert_int_equal(cache_lookup(c, &k, T0 + 10000, false, out,
	    sizeof(out)), 0);
	cache_free(c);

	/* A lower max-ttl (a reload) holds for what is cached already. */
	c = stored_then_limited(&k, a, al, 60, 0);
	assert_int_equal(cache_lookup(c, &k, T0 + 1000, false, out,
	    sizeof(out)), al);
	assert_int_equal(ttl_at(out, ql), 59);
	assert_int_equal(cache_lookup(c, &k, T0 + 60000, false, out,
	    sizeof(out)), 0);
	cache_free(c);

	/* With serve-stale, the stale window starts at the new max-ttl. */
	c = stored_then_limited(&k, a, al, 60, 30);
	assert_int_equal(cache_lookup(c, &k, T0 + 70000, false, out,
	    sizeof(out)), 0);
	assert_int_equal(cache_lookup(c, &k, T0 + 70000, true, out,
	    sizeof(out)), al);
	assert_int_equal(ttl_at(out, ql), CACHE_STALE_TTL);
	assert_int_equal(cache_lookup(c, &k, T0 + 91000, true, out,
	    sizeof(out)), 0);
	assert_int_equal(cache_count(c), 0);
	cache_free(c);
}

static void
negative_answers(void **state)
{
	struct cache *c = cache_new(10, 86400, 0);
	uint8_t q[300], a[512], out[512];
	size_t ql = query("nx.test", q), al;
	struct cache_key k;

	(void)state;
	cache_key_make(q, ql, false, &k);
	/* NXDOMAIN: min(SOA TTL 3600, MINIMUM 5). */
	al = answer(q, ql, DNS_RCODE_NXDOMAIN, 3600, 5, a);
	assert_true(cache_store(c, &k, a, al, T0));
	assert_int_equal(cache_lookup(c, &k, T0 + 4000, false, out,
	    sizeof(out)), al);
	assert_int_equal(dnsmsg_rcode(out), DNS_RCODE_NXDOMAIN);
	assert_int_equal(ttl_at(out, ql), 1);
	assert_int_equal(cache_lookup(c, &k, T0 + 5000, false, out,
	    sizeof(out)), 0);
	/* NODATA: NOERROR, no answer, SOA; here the SOA TTL is smaller. */
	al = answer(q, ql, DNS_RCODE_NOERROR, 2, 600, a);
	assert_true(cache_store(c, &k, a, al, T0));
	assert_int_equal(cache_lookup(c, &k, T0 + 1000, false, out,
	    sizeof(out)), al);
	assert_int_equal(cache_lookup(c, &k, T0 + 2000, false, out,
	    sizeof(out)), 0);
	/* Without an SOA a negative answer is not cached (RFC 2308 5). */
	al = answer(q, ql, DNS_RCODE_NXDOMAIN, 3600, 5, a);
	a[9] = 0;
	assert_false(cache_store(c, &k, a, ql, T0));
	/* SERVFAIL, REFUSED and truncated answers never are. */
	al = answer(q, ql, DNS_RCODE_SERVFAIL, 3600, 5, a);
	assert_false(cache_store(c, &k, a, al, T0));
	al = answer(q, ql, DNS_RCODE_REFUSED, 3600, 5, a);
	assert_false(cache_store(c, &k, a, al, T0));
	al = answer(q, ql, 0, 300, 0, a);
	a[2] |= 0x02;
	assert_false(cache_store(c, &k, a, al, T0));
	/* Nor is a TTL of 0. */
	al = answer(q, ql, 0, 0, 0, a);
	assert_false(cache_store(c, &k, a, al, T0));
	cache_free(c);
}

static void
lru_bound(void **state)
{
	struct cache *c = cache_new(3, 86400, 0);
	static const char *const names[] = { "a.t", "b.t", "c.t", "d.t" };
	uint8_t q[4][300], a[512], out[512];
	struct cache_key k[4];
	size_t ql[4];

	(void)state;
	for (int i = 0; i < 4; i++) {
		ql[i] = query(names[i], q[i]);
		cache_key_make(q[i], ql[i], false, &k[i]);
	}
	for (int i = 0; i < 3; i++)
		cache_store(c, &k[i], a, answer(q[i], ql[i], 0, 60, 0, a), T0);
	/* Touch a: b is now the least recently used. */
	assert_true(cache_lookup(c, &k[0], T0, false, out, sizeof(out)) > 0);
	/* A hint on a full cache (its victim) changes nothing it holds. */
	cache_prefetch(c, &k[3]);
	assert_int_equal(cache_count(c), 3);
	cache_store(c, &k[3], a, answer(q[3], ql[3], 0, 60, 0, a), T0);
	assert_int_equal(cache_count(c), 3);
	assert_int_equal(cache_lookup(c, &k[1], T0, false, out, sizeof(out)),
	    0);
	assert_true(cache_lookup(c, &k[0], T0, false, out, sizeof(out)) > 0);
	assert_true(cache_lookup(c, &k[2], T0, false, out, sizeof(out)) > 0);
	assert_true(cache_lookup(c, &k[3], T0, false, out, sizeof(out)) > 0);
	cache_free(c);

	/* Size 0 turns the cache off. */
	cache_prefetch(NULL, &k[0]);
	c = cache_new(0, 86400, 0);
	cache_prefetch(c, &k[0]);
	assert_false(cache_store(c, &k[0], a, answer(q[0], ql[0], 0, 60, 0, a),
	    T0));
	cache_free(c);
}

/*
 * 60 entries in 64 buckets share chains: entries leave from the head,
 * middle and tail of their chains, by eviction, by replacement and by
 * expiry, and every one left is still found.
 */
static void
shared_chains(void **state)
{
	enum { N = 200, SIZE = 60 };
	struct cache *c = cache_new(SIZE, 86400, 0);
	static uint8_t q[N][300];
	uint8_t a[512], out[512];
	struct cache_key k[N];
	size_t ql[N];
	char name[32];
	int i, j;

	(void)state;
	for (i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "n%d.chain.test", i);
		ql[i] = query(name, q[i]);
		cache_key_make(q[i], ql[i], false, &k[i]);
	}
	for (i = 0; i < N; i++) {
		/* Every third name a second time: replaced in place. */
		for (j = 0; j < (i % 3 == 0 ? 2 : 1); j++)
			assert_true(cache_store(c, &k[i], a,
			    answer(q[i], ql[i], 0, 60, 0, a), T0));
		assert_true(cache_count(c) <= SIZE);
	}
	assert_int_equal(cache_count(c), SIZE);
	for (i = 0; i < N; i++)
		assert_int_equal(cache_lookup(c, &k[i], T0, false, out,
		    sizeof(out)) > 0, i >= N - SIZE);
	/* Expired: dropped by the lookup, the rest of its chain intact. */
	for (i = N - SIZE; i < N; i += 2)
		assert_int_equal(cache_lookup(c, &k[i], T0 + 61000, false, out,
		    sizeof(out)), 0);
	assert_int_equal(cache_count(c), SIZE / 2);
	for (i = N - SIZE + 1; i < N; i += 2)
		assert_true(cache_lookup(c, &k[i], T0, false, out,
		    sizeof(out)) > 0);
	cache_free(c);
}

static void
serve_stale(void **state)
{
	struct cache *c = cache_new(10, 86400, 60);
	uint8_t q[300], a[512], out[512];
	size_t ql = query("s.test", q), al = answer(q, ql, 0, 10, 0, a);
	struct cache_key k;

	(void)state;
	cache_key_make(q, ql, false, &k);
	cache_store(c, &k, a, al, T0);
	/* Expired: not fresh, but stale within 60 s, with TTL 30. */
	assert_int_equal(cache_lookup(c, &k, T0 + 20000, false, out,
	    sizeof(out)), 0);
	assert_int_equal(cache_lookup(c, &k, T0 + 20000, true, out,
	    sizeof(out)), al);
	assert_int_equal(ttl_at(out, ql), CACHE_STALE_TTL);
	/* Past the stale window it is gone. */
	assert_int_equal(cache_lookup(c, &k, T0 + 70000, true, out,
	    sizeof(out)), 0);
	cache_free(c);
}

static void
padding_and_opt(void **state)
{
	uint8_t q[400], up[DNSMSG_UPSTREAM_MAX];
	struct dnsmsg_info info, uinfo;
	static const char *const names[] = { "a.t", "www.example.com",
	    "a-much-longer-label-for-the-padding-to-work-on.example.org" };

	(void)state;
	for (size_t i = 0; i < 3; i++) {
		size_t ql = query(names[i], q), n;

		/* The client's own OPT with an ECS option (code 8). */
		static const uint8_t opt[] = { 0, 0, 41, 0x10, 0, 0, 0, 0x80,
		    0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2 };

		memcpy(q + ql, opt, sizeof(opt));
		q[11] = 1;
		assert_int_equal(dnsmsg_parse_query(q, ql + sizeof(opt), &info),
		    DNSMSG_OK);
		assert_true(info.do_bit);
		n = dnsmsg_upstream_query(q, &info, up);
		/* RFC 8467: a multiple of 128 bytes. */
		assert_int_equal(n % DNSMSG_PAD_BLOCK, 0);
		assert_true(n >= ql + 15);
		assert_int_equal(dnsmsg_parse_query(up, n, &uinfo), DNSMSG_OK);
		assert_true(uinfo.edns);
		assert_true(uinfo.do_bit);
		assert_int_equal(uinfo.qend, ql);
		assert_memory_equal(up + 12, q + 12, ql - 12);
		/* One option, Padding (12); no Client Subnet (8). */
		assert_int_equal(up[ql + 11] << 8 | up[ql + 12], 12);
		assert_int_equal(4 + (up[ql + 13] << 8 | up[ql + 14]),
		    up[ql + 9] << 8 | up[ql + 10]);
		/* Without the client's EDNS: still padded, DO clear. */
		q[11] = 0;
		dnsmsg_parse_query(q, ql, &info);
		n = dnsmsg_upstream_query(q, &info, up);
		assert_int_equal(n % DNSMSG_PAD_BLOCK, 0);
		dnsmsg_parse_query(up, n, &uinfo);
		assert_false(uinfo.do_bit);

		/* An answer carrying that OPT loses it for such clients... */
		up[2] |= 0x80;
		assert_int_equal(dnsmsg_client_opt(up, n, sizeof(up), false), ql);
		assert_int_equal(up[11], 0);
		/* ...and EDNS clients get a bare OPT of ours, options gone. */
		n = dnsmsg_upstream_query(q, &info, up);
		up[2] |= 0x80;
		assert_int_equal(dnsmsg_client_opt(up, n, sizeof(up), true),
		    ql + 11);
		assert_int_equal(up[11], 1);
		assert_int_equal(up[ql + 1] << 8 | up[ql + 2], 41);
		assert_int_equal(up[ql + 9] << 8 | up[ql + 10], 0);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(key_ignores_case_not_bits),
		cmocka_unit_test(ttl_counts_down),
		cmocka_unit_test(max_ttl_clamps),
		cmocka_unit_test(negative_answers),
		cmocka_unit_test(lru_bound),
		cmocka_unit_test(shared_chains),
		cmocka_unit_test(serve_stale),
		cmocka_unit_test(padding_and_opt),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
