/*
 * The answer cache: positive and negative (RFC 2308) answers, TTLs
 * counted down when served, a max-ttl clamp, an LRU bound on the number of
 * entries, and stale answers (RFC 8767) on request.  A hit copies into the
 * caller's buffer and allocates nothing.
 */
#ifndef STUBBORN_CACHE_H
#define STUBBORN_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_STALE_TTL		30	/* RFC 8767 4: TTL of a stale answer */

/* What an answer is cached under: the question, any case, and DO/CD. */
struct cache_key {
	uint8_t		name[255];	/* wire format, lower-cased */
	uint8_t		namelen;
	uint16_t	qtype;
	uint16_t	qclass;
	uint8_t		flags;		/* CACHE_KEY_* */
	uint32_t	hash;
};
#define CACHE_KEY_DO	0x01
#define CACHE_KEY_CD	0x02
#define CACHE_KEY_NORD	0x04	/* RD clear: no recursion asked */

struct cache;

/*
 * The key of the query msg whose question ends at qend, with the DO bit
 * do_bit.  Returns 0, or -1 when the question does not parse.
 */
int	cache_key_make(const uint8_t *msg, size_t qend, bool do_bit,
	    struct cache_key *k);

/* True when a and b are the same key. */
bool	cache_key_equal(const struct cache_key *a, const struct cache_key *b);

/*
 * A cache of at most max_entries answers (0: caching is off), serving no
 * TTL above max_ttl seconds and keeping answers serve_stale seconds past
 * their expiry.  NULL when out of memory.
 */
struct cache *cache_new(size_t max_entries, uint32_t max_ttl,
	    uint32_t serve_stale);

/* NULL is a no-op. */
void	cache_free(struct cache *c);

/* A reload's max-ttl and serve-stale; the size stays as created. */
void	cache_set_limits(struct cache *c, uint32_t max_ttl,
	    uint32_t serve_stale);

/*
 * Ask the CPU for what storing under k will touch (its bucket, and the
 * entry a full cache evicts), while the caller still works on the answer.
 */
void	cache_prefetch(const struct cache *c, const struct cache_key *k);

/*
 * Keep a copy of the answer (len bytes) to k, received at now_ms, when it
 * is cacheable: NOERROR with answers (the smallest TTL), or NXDOMAIN or
 * NODATA with an SOA (min of its TTL and MINIMUM); never truncated ones,
 * SERVFAIL or others.  Returns true when it was stored.
 */
bool	cache_store(struct cache *c, const struct cache_key *k,
	    const uint8_t *answer, size_t len, uint64_t now_ms);

/*
 * The answer to k at now_ms, copied into out (outsz bytes) with TTLs
 * counted down, or 0 when there is none.  stale: accept an expired answer
 * still within serve-stale, served with TTL CACHE_STALE_TTL.  The ID and
 * the question's case are the caller's to set.
 */
size_t	cache_lookup(struct cache *c, const struct cache_key *k,
	    uint64_t now_ms, bool stale, uint8_t *out, size_t outsz);

/* Entries held now. */
size_t	cache_count(const struct cache *c);

#endif
