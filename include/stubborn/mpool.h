/*
 * Small blocks for the hot path.  Every answer allocates and frees a few
 * blocks under 1 KiB (an HTTP/2 stream and its header buffers, a cache
 * entry evicting another, OpenSSL's parameters for each record), a burst
 * of them per read.  glibc keeps seven freed blocks of a size at hand and
 * sends the rest through bins that merge neighbours, which cost more than
 * the rest of an answer's user time; this keeps freed blocks on a list per
 * size for the next burst, up to a bound, and hands larger ones to malloc.
 *
 * Single-threaded, like the daemon.  Under AddressSanitizer every call goes
 * straight to malloc and free, so reuse hides no use after free.
 */
#ifndef STUBBORN_MPOOL_H
#define STUBBORN_MPOOL_H

#include <stdbool.h>
#include <stddef.h>

/* MPOOL_POOLED keeps the pool under ASan too: its own test's second build. */
#if defined(MPOOL_POOLED)
#elif defined(__SANITIZE_ADDRESS__)
#define MPOOL_PASSTHROUGH	1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MPOOL_PASSTHROUGH	1
#endif
#endif

/* NULL when out of memory; mpool_alloc(0) is a valid, unique block. */
void	*mpool_alloc(size_t n);
void	*mpool_calloc(size_t nmemb, size_t size);
/* Like realloc: NULL p allocates; on failure p is left as it was. */
void	*mpool_realloc(void *p, size_t n);
/* NULL is a no-op. */
void	 mpool_free(void *p);

/*
 * Route OpenSSL's allocations through the pool.  Must run before OpenSSL
 * allocates anything; false when it already has with malloc (it then keeps
 * malloc, as blocks of both kinds must not meet in one free).
 */
bool	 mpool_openssl(void);

/* Blocks kept on the free lists, and their bytes (for tests). */
size_t	 mpool_cached(size_t *bytes);

#endif
