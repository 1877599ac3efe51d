#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "stubborn/dnsmsg.h"
#include "stubborn/log.h"
#include "stubborn/resolver.h"
#include "stubborn/upstream.h"
#include "transport.h"

/*
 * A client retries after a few seconds (dig 5 s, kdig 2 s, glibc 5 s):
 * one upstream gets ATTEMPT_MS before the next is tried, and the client
 * gets SERVFAIL within DEADLINE_MS rather than silence.
 */
#define ATTEMPT_MS		1500
#define DEADLINE_MS		4000
#define QUERIES_MAX		20000

struct query {
	struct txq		 tx;	/* first: the pool hands back &q->tx */
	struct resolver		*r;
	TAILQ_ENTRY(query)	 entry;
	struct client		 client;
	struct dnsmsg_info	 info;
	uint8_t			*msg;	/* the client's query, ID rewritten */
	size_t			 len;
	uint64_t		 tried;	/* a bit per upstream index */
	uint64_t		 deadline_ms;
	struct upstream		*up;	/* the current attempt's */
	struct event		*timer;
	bool			 retried_same;
};

struct resolver {
	struct event_base	*base;
	struct upstream_pool	*pool;
	TAILQ_HEAD(, query)	 queries;
	size_t			 nqueries;
	uint64_t		 shed_logged_ms;
};

static void	dispatch(struct query *);

static void
query_free(struct query *q)
{
	upstream_cancel(&q->tx);
	event_free(q->timer);
	TAILQ_REMOVE(&q->r->queries, q, entry);
	q->r->nqueries--;
	listener_client_release(&q->client);
	free(q);
}

static void
answer_error(struct query *q, int rcode)
{
	uint8_t buf[DNSMSG_HDR_LEN + 260];
	size_t n;

	n = dnsmsg_error_reply(q->msg, q->len, &q->info, rcode, buf,
	    sizeof(buf));
	if (n > 0) {
		dnsmsg_set_id(buf, q->info.id);
		listener_answer(&q->client, buf, n, q->info.udp_size);
	}
	query_free(q);
}

static void
reply_cb(void *arg, struct txq *tx, uint8_t *msg, size_t len)
{
	struct query *q = (struct query *)tx;

	(void)arg;
	dnsmsg_set_id(msg, q->info.id);
	listener_answer(&q->client, msg, len, q->info.udp_size);
	query_free(q);
}

static void
failed_cb(void *arg, struct txq *tx, struct upstream *up, bool retry_same)
{
	struct query *q = (struct query *)tx;

	(void)arg;
	evtimer_del(q->timer);
	/* A connection closed under us: the upstream deserves one retry. */
	if (retry_same && !q->retried_same) {
		q->retried_same = true;
		q->tried &= ~((uint64_t)1 << up->index);
	}
	dispatch(q);
}

static void
query_timo(evutil_socket_t fd, short ev, void *arg)
{
	struct query *q = arg;

	(void)fd;
	(void)ev;
	upstream_cancel(&q->tx);
	if (q->up != NULL)
		upstream_note_timeout(q->up);
	dispatch(q);
}

/* Send q to the next upstream, or SERVFAIL when none is left. */
static void
dispatch(struct query *q)
{
	uint64_t now = upstream_now_ms(), left;
	struct upstream *up;
	struct timeval tv;

	if (now >= q->deadline_ms ||
	    (up = upstream_pick(q->r->pool, q->tried)) == NULL) {
		if (log_getlevel() >= 7) {
			char name[256];

			log_debug("%s: no upstream answered; SERVFAIL",
			    dnsmsg_qname_str(q->msg, q->len, name,
			    sizeof(name)));
		}
		answer_error(q, DNS_RCODE_SERVFAIL);
		return;
	}
	q->tried |= (uint64_t)1 << up->index;
	q->up = up;
	left = q->deadline_ms - now;
	if (left > ATTEMPT_MS)
		left = ATTEMPT_MS;
	tv.tv_sec = (time_t)(left / 1000);
	tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
	evtimer_add(q->timer, &tv);
	/* q may be answered and freed inside; do not touch it after. */
	upstream_send(up, &q->tx);
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
	TAILQ_INIT(&r->queries);
	cbs.arg = r;
	if ((r->pool = upstream_pool_new(base, cfg, ct_list, &cbs)) == NULL) {
		free(r);
		return NULL;
	}
	return r;
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
		answer_error(q, DNS_RCODE_SERVFAIL);
	upstream_pool_free(r->pool);
	free(r);
}

void
resolver_query(struct resolver *r, const struct client *client,
    const uint8_t *msg, size_t len, const struct dnsmsg_info *info)
{
	struct query *q;

	if (r->nqueries >= QUERIES_MAX) {
		uint64_t now = upstream_now_ms();

		/* Overload: refuse new work rather than grow without bound. */
		if (now - r->shed_logged_ms > 10000) {
			log_warnx("%d queries in flight; answering SERVFAIL to "
			    "new ones", QUERIES_MAX);
			r->shed_logged_ms = now;
		}
		q = NULL;
	} else
		q = calloc(1, sizeof(*q) + len);
	if (q == NULL) {
		uint8_t buf[DNSMSG_HDR_LEN + 260];
		size_t n = dnsmsg_error_reply(msg, len, info,
		    DNS_RCODE_SERVFAIL, buf, sizeof(buf));

		if (n > 0)
			listener_answer(client, buf, n, info->udp_size);
		return;
	}
	q->r = r;
	q->msg = (uint8_t *)(q + 1);
	memcpy(q->msg, msg, len);
	q->len = len;
	q->info = *info;
	q->tx.msg = q->msg;
	q->tx.len = len;
	q->tx.qend = info->qend;
	q->deadline_ms = upstream_now_ms() + DEADLINE_MS;
	if ((q->timer = evtimer_new(r->base, query_timo, q)) == NULL) {
		free(q);
		return;
	}
	listener_client_copy(&q->client, client);
	TAILQ_INSERT_TAIL(&r->queries, q, entry);
	r->nqueries++;
	dispatch(q);
}
