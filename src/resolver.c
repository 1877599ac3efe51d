#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event_struct.h>

#include "stubborn/cache.h"
#include "stubborn/dnsmsg.h"
#include "stubborn/log.h"
#include "stubborn/metrics.h"
#include "stubborn/mpool.h"
#include "stubborn/resolver.h"
#include "stubborn/upstream.h"
#include "transport.h"

/*
 * A client retries after a few seconds (dig 5 s, kdig 2 s, glibc 5 s):
 * one upstream gets ATTEMPT_MS before the next is asked too, and the
 * client gets SERVFAIL (or a stale answer) within DEADLINE_MS rather than
 * silence.  An upstream passed over keeps its query: a slow answer that
 * comes first still wins.  ATTEMPTS_MAX are kept at once; a further one
 * takes the oldest's place, which had its time.
 */
#define ATTEMPT_MS		1500
#define DEADLINE_MS		3800	/* "within 4 s" at the client */
#define ATTEMPTS_MAX		2
#define QUERIES_MAX		20000
#define INFLIGHT_BUCKETS	4096	/* power of two */
#define SHED_LOG_EVERY_MS	10000

/*
 * Freed queries kept for reuse: no malloc per query (they are larger than
 * the pool's blocks).  None under ASan, which must see every free to catch
 * a use after it.
 */
#ifdef MPOOL_PASSTHROUGH
#define FREE_QUERIES_MAX	0
#else
#define FREE_QUERIES_MAX	1024
#endif

/* A client waiting for the answer to a question. */
struct waiter {
	TAILQ_ENTRY(waiter)	 entry;
	struct client		 client;
	struct dnsmsg_info	 info;	/* its ID, EDNS and UDP size */
	uint8_t			 qname[255];	/* its spelling of the name */
};

/* The question asked of one upstream. */
struct attempt {
	struct txq		 tx;	/* first: the pool hands back &a->tx */
	struct query		*q;
	struct upstream		*up;	/* NULL: no attempt in this slot */
	uint64_t		 sent_ms;
	bool			 timed_out;	/* counted against up once */
};

/* One question in flight upstream, for every client that asked it. */
struct query {
	struct attempt		 at[ATTEMPTS_MAX];
	struct attempt		*last;	/* the latest sent, whose time runs */
	struct resolver		*r;
	TAILQ_ENTRY(query)	 entry;
	struct query		*hnext;	/* in-flight map, by key */
	struct cache_key	 key;
	TAILQ_HEAD(, waiter)	 waiters;
	uint64_t		 tried;	/* a bit per upstream index */
	uint64_t		 deadline_ms;
	struct event		 timer;
	bool			 retried_same;
	bool			 in_timo;	/* query_timo dispatches after */
	struct waiter		 first;	/* the first client: no malloc */
	size_t			 len;
	uint8_t			 msg[DNSMSG_UPSTREAM_MAX];	/* padded */
};

struct resolver {
	struct event_base	*base;
	struct upstream_pool	*pool;
	struct cache		*cache;
	uint32_t		 max_ttl;
	TAILQ_HEAD(, query)	 queries;	/* oldest first */
	size_t			 nqueries;
	struct query		*inflight[INFLIGHT_BUCKETS];
	uint64_t		 shed_logged_ms;
	const struct timeval	*attempt_tv;	/* a libevent common timeout */
	struct query		*free;		/* reusable, through hnext */
	size_t			 nfree;
	bool			 reloading;	/* every query starts over after */
};

static bool	attempts_busy(const struct query *);
static void	dispatch(struct query *);
static void	dispatch_to(struct query *, struct upstream *);
static bool	stale_held(struct query *);

/* Send answer (len bytes) to w, in its ID, its name's case, its EDNS. */
static void
deliver(const struct client *c, const struct dnsmsg_info *info,
    const uint8_t *qname, const uint8_t *answer, size_t len)
{
	static uint8_t buf[DNSMSG_MAX_LEN + 11];

	memcpy(buf, answer, len);
	dnsmsg_set_id(buf, info->id);
	/* Same name but for case: the client sees its own spelling (0x20). */
	memcpy(buf + DNSMSG_HDR_LEN, qname, info->qend - DNSMSG_HDR_LEN - 4);
	/* RFC 6840 5.8: AD only for a client that asked with AD or DO. */
	if (!info->ad_bit && !info->do_bit)
		dnsmsg_clear_ad(buf);
	/* Recursion is what stubborn offers, whatever the upstream said. */
	dnsmsg_set_ra(buf);
	len = dnsmsg_client_opt(buf, len, sizeof(buf), info->edns);
	listener_answer(c, buf, len, info->udp_size);
}

static struct query **
bucket(struct resolver *r, const struct cache_key *k)
{
	return &r->inflight[k->hash & (INFLIGHT_BUCKETS - 1)];
}

static void
query_free(struct query *q)
{
	struct resolver *r = q->r;
	struct query **pp;
	struct waiter *w;
	size_t i;

	for (i = 0; i < ATTEMPTS_MAX; i++)
		upstream_cancel(&q->at[i].tx);
	evtimer_del(&q->timer);
	for (pp = bucket(r, &q->key); *pp != NULL; pp = &(*pp)->hnext) {
		if (*pp == q) {
			*pp = q->hnext;
			break;
		}
	}
	TAILQ_REMOVE(&r->queries, q, entry);
	r->nqueries--;
	while ((w = TAILQ_FIRST(&q->waiters)) != NULL) {
		TAILQ_REMOVE(&q->waiters, w, entry);
		listener_client_release(&w->client);
		if (w != &q->first)
			mpool_free(w);
	}
	if (r->nfree < FREE_QUERIES_MAX) {
		q->hnext = r->free;
		r->free = q;
		r->nfree++;
	} else
		free(q);
}

static void
answer_all(struct query *q, const uint8_t *answer, size_t len)
{
	struct waiter *w;

	TAILQ_FOREACH(w, &q->waiters, entry)
		deliver(&w->client, &w->info, w->qname, answer, len);
	query_free(q);
}

/* No upstream answered: a stale answer if allowed and held, or SERVFAIL. */
static void
answer_failure(struct query *q)
{
	static uint8_t buf[DNSMSG_MAX_LEN];
	struct waiter *w = TAILQ_FIRST(&q->waiters);
	size_t n;

	n = cache_lookup(q->r->cache, &q->key, upstream_now_ms(), true, buf,
	    sizeof(buf));
	metrics_inc(n ? M_STALE : M_SERVFAIL);
	if (n == 0) {
		n = dnsmsg_error_reply(q->msg, q->len, &w->info,
		    DNS_RCODE_SERVFAIL, buf, sizeof(buf));
		if (log_getlevel() >= 7) {
			char name[256];

			log_debug("%s: no upstream answered; SERVFAIL",
			    dnsmsg_qname_str(q->msg, q->len, name,
			    sizeof(name)));
		}
	}
	answer_all(q, buf, n);
}

static bool
reply_cb(void *arg, struct txq *tx, uint8_t *msg, size_t len)
{
	static uint8_t buf[DNSMSG_MAX_LEN + 11];
	struct attempt *a = (struct attempt *)tx;
	struct query *q = a->q;
	uint64_t now = upstream_now_ms();
	struct upstream *next;

	(void)arg;
	cache_prefetch(q->r->cache, &q->key);
	/*
	 * One form for the cache and every client: TTLs within max-ttl, and
	 * only our own OPT, last (each client then keeps or drops it).
	 */
	memcpy(buf, msg, len);
	if ((len = dnsmsg_reply_normalize(buf, len, sizeof(buf),
	    q->r->max_ttl)) == 0)
		return false;
	upstream_note_rtt(a->up, now - a->sent_ms);
	/*
	 * SERVFAIL may be that upstream's trouble, not the name's: another
	 * upstream up and not asked yet gets the question (as unbound's
	 * forwarding does); else a stale answer beats it (RFC 8767); else
	 * one asked already may yet answer.  Else it is passed on.
	 */
	if (dnsmsg_rcode(buf) == DNS_RCODE_SERVFAIL) {
		a->up = NULL;
		if ((next = upstream_pick(q->r->pool, q->tried, true)) !=
		    NULL) {
			dispatch_to(q, next);
			return true;
		}
		/* A stale answer now beats a fresh one later, as dispatch_to. */
		if (stale_held(q)) {
			answer_failure(q);
			return true;
		}
		if (attempts_busy(q))
			return true;	/* its end, or the timer, decides */
	}
	cache_store(q->r->cache, &q->key, buf, len, now);
	answer_all(q, buf, len);
	return true;
}

static bool
attempts_busy(const struct query *q)
{
	size_t i;

	for (i = 0; i < ATTEMPTS_MAX; i++)
		if (q->at[i].up != NULL)
			return true;
	return false;
}

/* Fire q's timer after ms, or at its deadline if that comes first. */
static void
arm(struct query *q, uint64_t now, uint64_t ms)
{
	uint64_t left = q->deadline_ms - now;
	struct timeval tv;

	if (ms == ATTEMPT_MS && left >= ATTEMPT_MS && q->r->attempt_tv != NULL) {
		evtimer_add(&q->timer, q->r->attempt_tv);	/* O(1) queue */
		return;
	}
	if (ms > left)
		ms = left;
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	evtimer_add(&q->timer, &tv);
}

static void
failed_cb(void *arg, struct txq *tx, struct upstream *up, bool retry_same)
{
	struct attempt *a = (struct attempt *)tx;
	struct query *q = a->q;

	(void)arg;
	a->up = NULL;
	/*
	 * A stream refused while the old pool is cancelled or freed: the
	 * reload dispatches every query again, on the new pool.
	 */
	if (q->r->reloading)
		return;
	/*
	 * A connection closed under us: an upstream still up deserves one
	 * retry, unless it had its time already.  One that closes every time
	 * is down soon (upstream.c).
	 */
	if (retry_same && !q->retried_same && up->state == UPSTREAM_UP &&
	    !a->timed_out) {
		q->retried_same = true;
		q->tried &= ~((uint64_t)1 << up->index);
	}
	/*
	 * query_timo dispatches once its timeout has closed the connection;
	 * an earlier attempt's end leaves the latest its time.
	 */
	if (q->in_timo || (a != q->last && q->last->up != NULL))
		return;
	dispatch(q);
}

static void
query_timo(evutil_socket_t fd, short ev, void *arg)
{
	struct query *q = arg;
	struct attempt *a = q->last;

	(void)fd;
	(void)ev;
	/* Too slow, but it keeps its query: its answer may yet come first. */
	if (a != NULL && a->up != NULL && !a->timed_out) {
		a->timed_out = true;
		log_debug("upstream %s: no answer within %llu ms",
		    a->up->conf->name, (unsigned long long)
		    (upstream_now_ms() - a->sent_ms));
		q->in_timo = true;
		upstream_note_timeout(a->up, &a->tx);
		q->in_timo = false;
		if (a->tx.conn == NULL)
			a->up = NULL;	/* its connection closed as wedged */
	}
	dispatch(q);
}

/* Has the cache a stale answer to serve in place of waiting? */
static bool
stale_held(struct query *q)
{
	static uint8_t buf[DNSMSG_MAX_LEN];

	return cache_lookup(q->r->cache, &q->key, upstream_now_ms(), true, buf,
	    sizeof(buf)) > 0;
}

/*
 * Ask the next upstream, keeping what is already asked.  With none left,
 * wait for those asked until the deadline; then (or with none asked) a
 * stale answer or SERVFAIL.
 */
static void
dispatch(struct query *q)
{
	dispatch_to(q, upstream_now_ms() >= q->deadline_ms ? NULL :
	    upstream_pick(q->r->pool, q->tried, false));
}

/* dispatch, to up as picked (NULL: none left). */
static void
dispatch_to(struct query *q, struct upstream *up)
{
	uint64_t now = upstream_now_ms();
	struct attempt *a = NULL;
	size_t i;

	if (now >= q->deadline_ms) {
		answer_failure(q);
		return;
	}
	if (up == NULL) {
		/* A stale answer now beats a fresh one later (RFC 8767 5). */
		if (!attempts_busy(q) || stale_held(q))
			answer_failure(q);
		else
			arm(q, now, q->deadline_ms - now);
		return;
	}
	for (i = 0; i < ATTEMPTS_MAX && a == NULL; i++)
		if (q->at[i].up == NULL)
			a = &q->at[i];
	if (a == NULL) {
		/* All busy: the oldest had its time. */
		for (a = &q->at[0], i = 1; i < ATTEMPTS_MAX; i++)
			if (q->at[i].sent_ms < a->sent_ms)
				a = &q->at[i];
		upstream_cancel(&a->tx);
	}
	q->tried |= (uint64_t)1 << up->index;
	a->up = up;
	a->sent_ms = now;
	a->timed_out = false;
	q->last = a;
	arm(q, now, ATTEMPT_MS);
	/* q may be answered and freed inside; do not touch it after. */
	upstream_send(up, &a->tx);
}

struct resolver *
resolver_new(struct event_base *base, const struct config *cfg,
    const struct ct_loglist *ct_list)
{
	struct resolver *r = calloc(1, sizeof(*r));
	struct upstream_cbs cbs = { reply_cb, failed_cb, NULL };

	if (r == NULL) {
		log_warn("%s", __func__);
		return NULL;
	}
	r->base = base;
	r->max_ttl = (uint32_t)cfg->cache_max_ttl;
	TAILQ_INIT(&r->queries);
	{
		/* Most attempts wait exactly this long: a queue, not a heap. */
		struct timeval tv = { ATTEMPT_MS / 1000,
		    (ATTEMPT_MS % 1000) * 1000 };

		r->attempt_tv = event_base_init_common_timeout(base, &tv);
	}
	cbs.arg = r;
	r->cache = cache_new((size_t)cfg->cache_size,
	    (uint32_t)cfg->cache_max_ttl, (uint32_t)cfg->cache_serve_stale);
	if (r->cache == NULL ||
	    (r->pool = upstream_pool_new(base, cfg, ct_list, &cbs)) == NULL) {
		cache_free(r->cache);
		free(r);
		return NULL;
	}
	return r;
}

int
resolver_reload(struct resolver *r, const struct config *cfg,
    const struct ct_loglist *ct_list)
{
	struct upstream_cbs cbs = { reply_cb, failed_cb, r };
	struct upstream_pool *pool;
	struct query *q, *next;

	if ((pool = upstream_pool_new(r->base, cfg, ct_list, &cbs)) == NULL)
		return -1;
	upstream_pool_carry(pool, r->pool);
	r->reloading = true;
	TAILQ_FOREACH(q, &r->queries, entry) {
		size_t i;

		for (i = 0; i < ATTEMPTS_MAX; i++) {
			upstream_cancel(&q->at[i].tx);
			q->at[i].up = NULL;
		}
		evtimer_del(&q->timer);
		q->tried = 0;
		q->last = NULL;
		q->retried_same = false;
	}
	upstream_pool_free(r->pool);
	r->pool = pool;
	r->reloading = false;
	r->max_ttl = (uint32_t)cfg->cache_max_ttl;
	if (r->cache != NULL)
		cache_set_limits(r->cache, r->max_ttl,
		    (uint32_t)cfg->cache_serve_stale);
	/* dispatch may answer and free q, never another query. */
	for (q = TAILQ_FIRST(&r->queries); q != NULL; q = next) {
		next = TAILQ_NEXT(q, entry);
		dispatch(q);
	}
	return 0;
}

struct upstream_pool *
resolver_pool(struct resolver *r)
{
	return r->pool;
}

size_t
resolver_cache_count(const struct resolver *r)
{
	return cache_count(r->cache);
}

size_t
resolver_pending(const struct resolver *r)
{
	return r->nqueries;
}

void
resolver_set_ct_list(struct resolver *r, const struct ct_loglist *list)
{
	upstream_pool_set_ct_list(r->pool, list);
}

void
resolver_free(struct resolver *r)
{
	struct query *q;

	if (r == NULL)
		return;
	while ((q = TAILQ_FIRST(&r->queries)) != NULL)
		answer_failure(q);
	upstream_pool_free(r->pool);
	cache_free(r->cache);
	while ((q = r->free) != NULL) {
		r->free = q->hnext;
		free(q);
	}
	free(r);
}

static bool
add_waiter(struct query *q, const struct client *client,
    const uint8_t *msg, const struct dnsmsg_info *info)
{
	size_t nl = info->qend - DNSMSG_HDR_LEN - 4;
	struct waiter *w;

	if (nl > sizeof(w->qname))
		return false;
	if (TAILQ_EMPTY(&q->waiters))
		w = &q->first;
	else if ((w = mpool_alloc(sizeof(*w))) == NULL)
		return false;
	listener_client_copy(&w->client, client);
	w->info = *info;
	memcpy(w->qname, msg + DNSMSG_HDR_LEN, nl);
	TAILQ_INSERT_TAIL(&q->waiters, w, entry);
	return true;
}

static void
answer_servfail(const struct client *client, const uint8_t *msg, size_t len,
    const struct dnsmsg_info *info)
{
	uint8_t buf[DNSMSG_ERROR_MAX];
	size_t n = dnsmsg_error_reply(msg, len, info, DNS_RCODE_SERVFAIL, buf,
	    sizeof(buf));

	if (n > 0)
		listener_answer(client, buf, n, info->udp_size);
}

void
resolver_query(struct resolver *r, const struct client *client,
    const uint8_t *msg, size_t len, const struct dnsmsg_info *info)
{
	static uint8_t hit[DNSMSG_MAX_LEN];
	uint64_t now = upstream_now_ms();
	struct cache_key key;
	struct query *q;
	size_t n, i;

	if (cache_key_make(msg, info->qend, info->do_bit, &key) != 0) {
		answer_servfail(client, msg, len, info);
		return;
	}
	if ((n = cache_lookup(r->cache, &key, now, false, hit,
	    sizeof(hit))) > 0) {
		metrics_inc(M_CACHE_HITS);
		deliver(client, info, msg + DNSMSG_HDR_LEN, hit, n);
		return;
	}
	metrics_inc(M_CACHE_MISSES);
	/* The same question in flight: wait for its answer. */
	for (q = *bucket(r, &key); q != NULL; q = q->hnext) {
		if (cache_key_equal(&q->key, &key)) {
			metrics_inc(M_COALESCED);
			if (!add_waiter(q, client, msg, info))
				answer_servfail(client, msg, len, info);
			return;
		}
	}
	if (r->nqueries >= QUERIES_MAX) {
		/* Overload: the oldest work goes first, memory stays bounded. */
		if (now - r->shed_logged_ms > SHED_LOG_EVERY_MS) {
			log_warnx("%d questions in flight: failing the oldest "
			    "to take new ones", QUERIES_MAX);
			r->shed_logged_ms = now;
		}
		metrics_inc(M_SHED);
		answer_failure(TAILQ_FIRST(&r->queries));
	}
	if ((q = r->free) != NULL) {
		r->free = q->hnext;
		r->nfree--;
	} else if ((q = malloc(sizeof(*q))) == NULL) {
		answer_servfail(client, msg, len, info);
		return;
	}
	/* Every field but the message buffer, which is written next. */
	memset(q, 0, offsetof(struct query, msg));
	q->r = r;
	q->key = key;
	TAILQ_INIT(&q->waiters);
	q->len = dnsmsg_upstream_query(msg, info, q->msg);
	/* Every attempt sends the same bytes; each transport copies them. */
	for (i = 0; i < ATTEMPTS_MAX; i++) {
		q->at[i].q = q;
		q->at[i].tx.msg = q->msg;
		q->at[i].tx.len = q->len;
		q->at[i].tx.qend = info->qend;
	}
	q->deadline_ms = now + DEADLINE_MS;
	evtimer_assign(&q->timer, r->base, query_timo, q);
	add_waiter(q, client, msg, info);	/* the first cannot fail */
	q->hnext = *bucket(r, &key);
	*bucket(r, &key) = q;
	TAILQ_INSERT_TAIL(&r->queries, q, entry);
	r->nqueries++;
	dispatch(q);
}
