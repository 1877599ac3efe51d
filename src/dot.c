/*
 * DNS over TLS (RFC 7858): one persistent connection per upstream, many
 * queries in flight matched by a rewritten message ID (RFC 7766 6.2.1.1),
 * replies taken in any order.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/err.h>

#include "stubborn/dnsmsg.h"
#include "stubborn/log.h"
#include "stubborn/tls.h"
#include "stubborn/upstream.h"
#include "transport.h"

#define IDLE_TIMEOUT_MS		30000
#define INFLIGHT_BUCKETS	256	/* power of two */
#define INFLIGHT_MAX		4096	/* more wait for a free slot */

struct dot_conn {
	struct conn		 c;	/* first: the pool sees a struct conn */
	struct txq_list		 waiting;	/* not written yet */
	struct txq_list		 inflight;	/* written, no reply yet */
	struct txq		*buckets[INFLIGHT_BUCKETS];
	size_t			 ninflight;
	uint16_t		 next_id;
};

static void	dot_read_cb(struct bufferevent *, void *);

static struct txq **
bucket(struct dot_conn *dc, uint16_t id)
{
	return &dc->buckets[id & (INFLIGHT_BUCKETS - 1)];
}

static struct txq *
inflight_find(struct dot_conn *dc, uint16_t id)
{
	struct txq *q;

	for (q = *bucket(dc, id); q != NULL; q = q->hnext)
		if (q->wire_id == id)
			return q;
	return NULL;
}

static void
inflight_remove(struct dot_conn *dc, struct txq *q)
{
	struct txq **pp;

	for (pp = bucket(dc, q->wire_id); *pp != NULL; pp = &(*pp)->hnext) {
		if (*pp == q) {
			*pp = q->hnext;
			break;
		}
	}
	TAILQ_REMOVE(&dc->inflight, q, entry);
	dc->ninflight--;
	q->hnext = NULL;
}

static void
arm_idle(struct dot_conn *dc)
{
	if (dc->ninflight == 0 && TAILQ_EMPTY(&dc->waiting))
		conn_timer(&dc->c, IDLE_TIMEOUT_MS);
}

static void
write_query(struct dot_conn *dc, struct txq *q)
{
	uint8_t frame[2] = { (uint8_t)(q->len >> 8), (uint8_t)q->len };
	uint16_t id;

	/*
	 * IDs go round from a random start: a late reply could only match a
	 * query 65,536 IDs later.  (Inside TLS they need not be secret; one
	 * arc4random() per query cost a system call each.)
	 */
	do {
		id = dc->next_id++;
	} while (inflight_find(dc, id) != NULL);
	q->wire_id = id;
	dnsmsg_set_id(q->msg, id);
	dc->c.up->stats.queries++;
	q->hnext = *bucket(dc, id);
	*bucket(dc, id) = q;
	TAILQ_INSERT_TAIL(&dc->inflight, q, entry);
	dc->ninflight++;
	/* Both pieces land in one output buffer and leave in one record. */
	bufferevent_write(dc->c.bev, frame, sizeof(frame));
	bufferevent_write(dc->c.bev, q->msg, q->len);
}

static void
flush_waiting(struct dot_conn *dc)
{
	struct txq *q;

	while (dc->ninflight < INFLIGHT_MAX &&
	    (q = TAILQ_FIRST(&dc->waiting)) != NULL) {
		TAILQ_REMOVE(&dc->waiting, q, entry);
		write_query(dc, q);
	}
}

static void
dot_free(struct conn *c)
{
	free(c);
}

/* Stop all I/O and hand every attached query to the caller's list. */
static void
teardown(struct dot_conn *dc, struct txq_list *orphans)
{
	struct txq *q;

	while ((q = TAILQ_FIRST(&dc->inflight)) != NULL) {
		inflight_remove(dc, q);
		q->conn = NULL;
		TAILQ_INSERT_TAIL(orphans, q, entry);
	}
	while ((q = TAILQ_FIRST(&dc->waiting)) != NULL) {
		TAILQ_REMOVE(&dc->waiting, q, entry);
		q->conn = NULL;
		TAILQ_INSERT_TAIL(orphans, q, entry);
	}
	conn_stop(&dc->c, dot_free);
}

/* The end: tell the pool, then every query that was attached. */
static void
dot_fail(struct dot_conn *dc, enum conn_outcome outcome)
{
	struct txq_list orphans = TAILQ_HEAD_INITIALIZER(orphans);

	teardown(dc, &orphans);
	conn_report(&dc->c, outcome, &orphans);
}

static void
dot_started(struct conn *c)
{
	flush_waiting((struct dot_conn *)c);
	arm_idle((struct dot_conn *)c);
}

static void
dot_conn_fail(struct conn *c, enum conn_outcome o)
{
	dot_fail((struct dot_conn *)c, o);
}

static bool
dot_busy(const struct conn *c)
{
	const struct dot_conn *dc = (const struct dot_conn *)c;

	return dc->ninflight > 0 || !TAILQ_EMPTY(&dc->waiting);
}

static void	dot_idle(struct conn *);

static size_t
dot_inflight(const struct conn *c)
{
	return ((const struct dot_conn *)c)->ninflight;
}

static const struct conn_io dot_io = {
	.read = dot_read_cb,
	.started = dot_started,
	.fail = dot_conn_fail,
	.busy = dot_busy,
	.inflight = dot_inflight,
	.idle = dot_idle,
};

static void
dot_read_cb(struct bufferevent *bev, void *arg)
{
	static uint8_t msg[DNSMSG_MAX_LEN];
	struct dot_conn *dc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct txq *q;

	while (dc->c.state == CONN_READY) {
		uint8_t hdr[2];
		size_t len;

		if (evbuffer_copyout(in, hdr, 2) != 2)
			break;
		len = (size_t)(hdr[0] << 8 | hdr[1]);
		if (evbuffer_get_length(in) < 2 + len)
			break;
		evbuffer_drain(in, 2);
		evbuffer_remove(in, msg, len);
		if (len < DNSMSG_HDR_LEN ||
		    (q = inflight_find(dc, dnsmsg_get_id(msg))) == NULL ||
		    !dnsmsg_reply_matches(msg, len, q->msg, q->qend)) {
			log_debug("upstream %s: discarded a reply of %zu bytes "
			    "that matches no query in flight",
			    dc->c.up->conf->name, len);
			continue;
		}
		inflight_remove(dc, q);
		q->conn = NULL;
		upstream_txq_reply(&dc->c, q, msg, len);
	}
	if (dc->c.state == CONN_READY) {
		flush_waiting(dc);
		arm_idle(dc);
	}
}

/* Idle: RFC 7766 asks clients to close what they do not use. */
static void
dot_idle(struct conn *c)
{
	struct txq_list none = TAILQ_HEAD_INITIALIZER(none);

	log_debug("upstream %s: closing idle connection", c->up->conf->name);
	teardown((struct dot_conn *)c, &none);
	upstream_conn_event(c, CONN_CLOSED_IDLE, NULL);
}

static struct conn *
dot_open(struct upstream *up, struct event_base *base)
{
	struct dot_conn *dc = calloc(1, sizeof(*dc));

	if (dc == NULL) {
		log_warn("%s", __func__);
		return NULL;
	}
	TAILQ_INIT(&dc->waiting);
	TAILQ_INIT(&dc->inflight);
	dc->next_id = (uint16_t)arc4random();
	if (conn_start(&dc->c, &dot_ops, up, base, &dot_io) != 0) {
		free(dc);
		return NULL;
	}
	return &dc->c;
}

static void
dot_send(struct conn *c, struct txq *q)
{
	struct dot_conn *dc = (struct dot_conn *)c;

	q->conn = c;
	if (c->state == CONN_READY) {
		evtimer_del(c->timer);
		if (dc->ninflight < INFLIGHT_MAX) {
			write_query(dc, q);
			return;
		}
	}
	TAILQ_INSERT_TAIL(&dc->waiting, q, entry);
}

static void
dot_cancel(struct conn *c, struct txq *q)
{
	struct dot_conn *dc = (struct dot_conn *)c;

	if (inflight_find(dc, q->wire_id) == q)
		inflight_remove(dc, q);
	else
		TAILQ_REMOVE(&dc->waiting, q, entry);
	q->conn = NULL;
	if (c->state == CONN_READY)
		arm_idle(dc);
}

static void
dot_close(struct conn *c)
{
	struct dot_conn *dc = (struct dot_conn *)c;
	struct txq_list orphans = TAILQ_HEAD_INITIALIZER(orphans);
	struct txq *q;

	teardown(dc, &orphans);
	while ((q = TAILQ_FIRST(&orphans)) != NULL)
		TAILQ_REMOVE(&orphans, q, entry);
}

const struct transport_ops dot_ops = {
	.name = "dot",
	.open = dot_open,
	.send = dot_send,
	.cancel = dot_cancel,
	.close = dot_close,
};
