#include "config.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "stubborn/cache.h"
#include "stubborn/dnsmsg.h"
#include "stubborn/mpool.h"

#define TYPE_SOA	6
#define TYPE_OPT	41
#define TTLS_MAX	256	/* RRs of one answer whose TTLs are aged */
#define BUCKETS_MAX	(1u << 20)

/*
 * One allocation per answer: this header, the TTL offsets, the key's
 * name and the wire (a full struct cache_key would cost 255 bytes each).
 */
struct entry {
	struct entry		*hnext;
	struct entry		**hprev;	/* unlinked without a walk */
	TAILQ_ENTRY(entry)	 lru;
	uint64_t		 stored_ms;
	uint32_t		 hash;
	uint32_t		 ttl;		/* clamped lifetime */
	uint16_t		 qtype;
	uint16_t		 qclass;
	uint16_t		 nttl;
	uint16_t		 len;
	uint8_t			 flags;
	uint8_t			 namelen;
	uint16_t		 ttl_off[];	/* where each RR's TTL is */
	/* then the name (namelen bytes), then the wire (len bytes) */
};

struct cache {
	struct entry		**buckets;
	uint32_t		 mask;
	TAILQ_HEAD(entry_lru_head, entry) lru;	/* most recent first */
	size_t			 count;
	size_t			 max;
	uint32_t		 max_ttl;
	uint32_t		 serve_stale;
};

static inline uint16_t
get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t
get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static inline void
put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

int
cache_key_make(const uint8_t *msg, size_t qend, bool do_bit,
    struct cache_key *k)
{
	size_t nl, i;
	uint32_t h = 2166136261u;	/* FNV-1a */

	if (qend < DNSMSG_HDR_LEN + 5)
		return -1;
	nl = qend - DNSMSG_HDR_LEN - 4;
	if (nl > sizeof(k->name))
		return -1;
	/* The name is known well formed: lower-case its label bytes. */
	for (i = 0; i < nl; i++) {
		uint8_t ch = msg[DNSMSG_HDR_LEN + i];

		if (ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		k->name[i] = ch;
		h = (h ^ ch) * 16777619u;
	}
	k->namelen = (uint8_t)nl;
	k->qtype = get16(msg + qend - 4);
	k->qclass = get16(msg + qend - 2);
	/*
	 * RD and CD are the header's; DO is the OPT record's.  RD goes
	 * upstream as the client set it, and is echoed: a question asked
	 * without recursion has answers of its own.
	 */
	k->flags = (uint8_t)((do_bit ? CACHE_KEY_DO : 0) |
	    ((msg[3] & 0x10) ? CACHE_KEY_CD : 0) |
	    ((msg[2] & 0x01) ? 0 : CACHE_KEY_NORD));
	h = (h ^ k->qtype) * 16777619u;
	h = (h ^ k->qclass) * 16777619u;
	k->hash = (h ^ k->flags) * 16777619u;
	return 0;
}

bool
cache_key_equal(const struct cache_key *a, const struct cache_key *b)
{
	return a->hash == b->hash && a->namelen == b->namelen &&
	    a->qtype == b->qtype && a->qclass == b->qclass &&
	    a->flags == b->flags && memcmp(a->name, b->name, a->namelen) == 0;
}

struct cache *
cache_new(size_t max_entries, uint32_t max_ttl, uint32_t serve_stale)
{
	struct cache *c = calloc(1, sizeof(*c));
	uint32_t n = 64;

	if (c == NULL)
		return NULL;
	while (n < max_entries && n < BUCKETS_MAX)
		n <<= 1;
	if ((c->buckets = calloc(n, sizeof(*c->buckets))) == NULL) {
		free(c);
		return NULL;
	}
	c->mask = n - 1;
	c->max = max_entries;
	c->max_ttl = max_ttl;
	c->serve_stale = serve_stale;
	TAILQ_INIT(&c->lru);
	return c;
}

void
cache_set_limits(struct cache *c, uint32_t max_ttl, uint32_t serve_stale)
{
	c->max_ttl = max_ttl;
	c->serve_stale = serve_stale;
}

static inline uint8_t *
entry_name(struct entry *e)
{
	return (uint8_t *)(e->ttl_off + e->nttl);
}

static inline uint8_t *
entry_wire(struct entry *e)
{
	return entry_name(e) + e->namelen;
}

static bool
entry_is(struct entry *e, const struct cache_key *k)
{
	return e->hash == k->hash && e->namelen == k->namelen &&
	    e->qtype == k->qtype && e->qclass == k->qclass &&
	    e->flags == k->flags &&
	    memcmp(entry_name(e), k->name, k->namelen) == 0;
}

static void
entry_drop(struct cache *c, struct entry *e)
{
	if ((*e->hprev = e->hnext) != NULL)
		e->hnext->hprev = e->hprev;
	TAILQ_REMOVE(&c->lru, e, lru);
	c->count--;
	mpool_free(e);
}

void
cache_free(struct cache *c)
{
	struct entry *e;

	if (c == NULL)
		return;
	while ((e = TAILQ_FIRST(&c->lru)) != NULL)
		entry_drop(c, e);
	free(c->buckets);
	free(c);
}

size_t
cache_count(const struct cache *c)
{
	return c ? c->count : 0;
}

static struct entry *
find(struct cache *c, const struct cache_key *k)
{
	struct entry *e;

	for (e = c->buckets[k->hash & c->mask]; e != NULL; e = e->hnext)
		if (entry_is(e, k))
			return e;
	return NULL;
}

/*
 * Walk the answer's records: where each TTL is (OPT has none), and the
 * lifetime the answer may be cached for; 0 when it must not be.
 */
static uint32_t
scan(const uint8_t *m, size_t len, uint16_t *off, uint16_t *noff)
{
	uint16_t counts[3], i;
	uint32_t min_ttl = UINT32_MAX, soa_ttl = 0;
	int rcode = dnsmsg_rcode(m), sec;
	bool soa = false;
	size_t p;
	long end;

	*noff = 0;
	if ((m[2] & 0x02) || get16(m + 4) != 1 ||
	    (rcode != DNS_RCODE_NOERROR && rcode != DNS_RCODE_NXDOMAIN))
		return 0;	/* truncated, odd, or an error: not cached */
	if ((end = dnsmsg_skip_name(m, len, DNSMSG_HDR_LEN)) < 0 ||
	    (size_t)end + 4 > len)
		return 0;
	p = (size_t)end + 4;
	counts[0] = get16(m + 6);
	counts[1] = get16(m + 8);
	counts[2] = get16(m + 10);
	for (sec = 0; sec < 3; sec++) {
		for (i = 0; i < counts[sec]; i++) {
			uint16_t type, rdlen;
			uint32_t ttl;

			if ((end = dnsmsg_skip_name(m, len, p)) < 0 ||
			    (size_t)end + 10 > len)
				return 0;
			p = (size_t)end;
			type = get16(m + p);
			ttl = get32(m + p + 4);
			rdlen = get16(m + p + 8);
			if (p + 10 + rdlen > len)
				return 0;
			if (type != TYPE_OPT) {
				if (*noff == TTLS_MAX)
					return 0;
				off[(*noff)++] = (uint16_t)(p + 4);
				/* RFC 2181 8: a TTL over 2^31-1 means 0. */
				if (ttl > 0x7fffffff)
					ttl = 0;
				/* Additional records too: none is served dead. */
				if (ttl < min_ttl)
					min_ttl = ttl;
				if (sec == 1 && type == TYPE_SOA && rdlen >= 20) {
					uint32_t minimum = get32(m + p + 10 +
					    rdlen - 4);

					soa = true;
					soa_ttl = ttl < minimum ? ttl : minimum;
				}
			}
			p += 10 + (size_t)rdlen;
		}
	}
	if (rcode == DNS_RCODE_NXDOMAIN || counts[0] == 0)
		return soa ? soa_ttl : 0;	/* RFC 2308 5: no SOA, no cache */
	return min_ttl == UINT32_MAX ? 0 : min_ttl;
}

void
cache_prefetch(const struct cache *c, const struct cache_key *k)
{
	if (c == NULL || c->max == 0)
		return;
	__builtin_prefetch(&c->buckets[k->hash & c->mask], 1);
	/*
	 * The victim's address without a load: the list's last link is its
	 * lru.tqe_next (TAILQ_LAST would read two cold entries to find it).
	 */
	if (c->count >= c->max)
		__builtin_prefetch((const char *)c->lru.tqh_last -
		    offsetof(struct entry, lru.tqe_next), 1);
}

bool
cache_store(struct cache *c, const struct cache_key *k,
    const uint8_t *answer, size_t len, uint64_t now_ms)
{
	uint16_t off[TTLS_MAX], noff;
	struct entry *e;
	uint32_t ttl;

	if (c == NULL || c->max == 0 || len < DNSMSG_HDR_LEN ||
	    len > DNSMSG_MAX_LEN)
		return false;
	if ((ttl = scan(answer, len, off, &noff)) == 0)
		return false;
	if (ttl > c->max_ttl)
		ttl = c->max_ttl;
	if ((e = find(c, k)) != NULL)
		entry_drop(c, e);
	while (c->count >= c->max)
		entry_drop(c, TAILQ_LAST(&c->lru, entry_lru_head));
	e = mpool_alloc(sizeof(*e) + noff * sizeof(uint16_t) + k->namelen +
	    len);
	if (e == NULL)
		return false;
	e->hash = k->hash;
	e->qtype = k->qtype;
	e->qclass = k->qclass;
	e->flags = k->flags;
	e->namelen = k->namelen;
	e->stored_ms = now_ms;
	e->ttl = ttl;
	e->nttl = noff;
	e->len = (uint16_t)len;
	memcpy(e->ttl_off, off, noff * sizeof(uint16_t));
	memcpy(entry_name(e), k->name, k->namelen);
	memcpy(entry_wire(e), answer, len);
	e->hprev = &c->buckets[k->hash & c->mask];
	if ((e->hnext = *e->hprev) != NULL)
		e->hnext->hprev = &e->hnext;
	*e->hprev = e;
	TAILQ_INSERT_HEAD(&c->lru, e, lru);
	c->count++;
	return true;
}

size_t
cache_lookup(struct cache *c, const struct cache_key *k, uint64_t now_ms,
    bool stale, uint8_t *out, size_t outsz)
{
	struct entry *e;
	uint64_t age;
	uint32_t life;
	uint16_t i;

	if (c == NULL || c->max == 0 || (e = find(c, k)) == NULL)
		return 0;
	/* A max-ttl lowered since (a reload) holds for this one too. */
	life = e->ttl < c->max_ttl ? e->ttl : c->max_ttl;
	age = (now_ms - e->stored_ms) / 1000;
	if (age >= life + (uint64_t)c->serve_stale) {
		entry_drop(c, e);	/* past any use */
		return 0;
	}
	if ((age >= life && !stale) || e->len > outsz)
		return 0;
	memcpy(out, entry_wire(e), e->len);
	for (i = 0; i < e->nttl; i++) {
		uint8_t *p = out + e->ttl_off[i];
		uint32_t ttl = get32(p);

		if (age >= life)
			ttl = CACHE_STALE_TTL;
		else {
			if (ttl > life)
				ttl = life;
			ttl = ttl > age ? ttl - (uint32_t)age : 0;
		}
		put32(p, ttl);
	}
	TAILQ_REMOVE(&c->lru, e, lru);
	TAILQ_INSERT_HEAD(&c->lru, e, lru);
	return e->len;
}
