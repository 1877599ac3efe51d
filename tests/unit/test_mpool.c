/* The small-block pool: sizes, realloc across classes, the bound kept. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "stubborn/mpool.h"

static bool	openssl_routed;

static void
fill(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed + i);
}

static bool
filled(const uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(seed + i))
			return false;
	return true;
}

/* Every size, small and large, holds its bytes while others come and go. */
static void
sizes_hold_their_bytes(void **state)
{
	enum { N = 2100 };
	static uint8_t *p[N];
	size_t n;

	(void)state;
	for (n = 0; n < N; n++) {
		assert_non_null(p[n] = mpool_alloc(n));
		assert_int_equal((uintptr_t)p[n] % _Alignof(max_align_t), 0);
		fill(p[n], n, (uint8_t)n);
	}
	/* Free every other one and allocate again into the gaps. */
	for (n = 0; n < N; n += 2)
		mpool_free(p[n]);
	for (n = 0; n < N; n += 2) {
		assert_non_null(p[n] = mpool_alloc(n));
		fill(p[n], n, (uint8_t)(n + 7));
	}
	for (n = 0; n < N; n++) {
		assert_true(filled(p[n], n, (uint8_t)(n + (n % 2 ? 0 : 7))));
		mpool_free(p[n]);
	}
	mpool_free(NULL);
}

static void
zero_sized_blocks_are_distinct(void **state)
{
	void *a = mpool_alloc(0), *b = mpool_alloc(0);

	(void)state;
	assert_non_null(a);
	assert_non_null(b);
	assert_ptr_not_equal(a, b);
	mpool_free(a);
	mpool_free(b);
}

static void
calloc_zeroes_and_refuses_overflow(void **state)
{
	uint8_t *p;
	size_t i;

	(void)state;
	/* A block that held bytes comes back zeroed. */
	p = mpool_alloc(200);
	memset(p, 0xa5, 200);
	mpool_free(p);
	assert_non_null(p = mpool_calloc(10, 20));
	for (i = 0; i < 200; i++)
		assert_int_equal(p[i], 0);
	mpool_free(p);
	/* Wraps to 0 bytes: without the check, a block would come back. */
	assert_null(mpool_calloc(SIZE_MAX / 2 + 1, 2));
#ifndef MPOOL_PASSTHROUGH
	/* (ASan's malloc aborts on it.) */
	assert_null(mpool_alloc(SIZE_MAX - 8));
#endif
}

/* Growing and shrinking keeps the bytes, in a class, across, and large. */
static void
realloc_keeps_contents(void **state)
{
	static const size_t steps[] = { 10, 31, 33, 200, 1024, 1025, 5000,
	    700, 40, 3000, 2000, 1 };
	uint8_t *p = NULL;
	size_t have = 0, i;

	(void)state;
	for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		size_t keep = have < steps[i] ? have : steps[i];

		assert_non_null(p = mpool_realloc(p, steps[i]));
		assert_true(filled(p, keep, 3));
		fill(p, steps[i], 3);
		have = steps[i];
	}
	mpool_free(p);
}

/* However many blocks come back, the lists keep a bounded amount. */
static void
kept_blocks_are_bounded(void **state)
{
	enum { N = 5000, SIZE = 1000, KEEP = 128 * 1024 };
	static void *p[N];
	size_t bytes0, bytes, i, n;

	(void)state;
	/* Empty the 1 KiB class first: what is kept after is all ours. */
	for (n = 0; n < N; n++)
		assert_non_null(p[n] = mpool_alloc(SIZE));
	mpool_cached(&bytes0);
	for (i = 0; i < n; i++)
		mpool_free(p[i]);
	/* 5 MB in blocks of one size: 128 KiB of it stays, no more. */
	mpool_cached(&bytes);
#ifndef MPOOL_PASSTHROUGH
	assert_int_equal(bytes - bytes0, KEEP);
	/* A block freed is taken again by the next of its size. */
	{
		void *a = mpool_alloc(30), *b;

		mpool_free(a);
		b = mpool_alloc(20);
		assert_ptr_equal(a, b);
		mpool_free(b);
	}
#else
	assert_int_equal(bytes, bytes0);
#endif
}

/* OpenSSL's allocations go through the pool once routed before any. */
static void
openssl_goes_through_the_pool(void **state)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen;
	EVP_MD_CTX *ctx;
	size_t before = mpool_cached(NULL);

	(void)state;
	assert_true(openssl_routed);
	for (int i = 0; i < 100; i++) {
		assert_non_null(ctx = EVP_MD_CTX_new());
		assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
		assert_int_equal(EVP_DigestUpdate(ctx, "abc", 3), 1);
		assert_int_equal(EVP_DigestFinal_ex(ctx, md, &mdlen), 1);
		EVP_MD_CTX_free(ctx);
	}
	assert_int_equal(mdlen, 32);
	assert_int_equal(md[0], 0xba);
	assert_int_equal(md[31], 0xad);
#ifndef MPOOL_PASSTHROUGH
	/* What it freed waits on the lists. */
	assert_true(mpool_cached(NULL) > before);
#else
	(void)before;
#endif
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		/* First, while the lists have room for what it frees. */
		cmocka_unit_test(openssl_goes_through_the_pool),
		cmocka_unit_test(sizes_hold_their_bytes),
		cmocka_unit_test(zero_sized_blocks_are_distinct),
		cmocka_unit_test(calloc_zeroes_and_refuses_overflow),
		cmocka_unit_test(realloc_keeps_contents),
		cmocka_unit_test(kept_blocks_are_bounded),
	};

	openssl_routed = mpool_openssl();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
