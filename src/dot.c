/*
 * DNS over TLS (RFC 7858): one persistent connection per upstream, many
 * queries in flight matched by a rewritten message ID (RFC 7766 6.2.1.1),
 * replies taken in any order.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>

#include "stubborn/dnsmsg.h"
#include "stubborn/log.h"
#include "stubborn/tls.h"
#include "stubborn/upstream.h"
#include "transport.h"

#define CONNECT_TIMEOUT_MS	5000
#define IDLE_TIMEOUT_MS		30000
#define INFLIGHT_BUCKETS	256	/* power of two */
#define INFLIGHT_MAX		4096	/* more wait for a free slot */

struct dot_conn {
	struct conn		 c;	/* first: the pool sees a struct conn */
	struct event_base	*base;
	struct bufferevent	*bev;
	struct tls_gate		 gate;
	struct txq_list		 waiting;	/* not written yet */
	struct txq_list		 inflight;	/* written, no reply yet */
	struct txq		*buckets[INFLIGHT_BUCKETS];
	size_t			 ninflight;
	struct event		*timer;	/* connect timeout, then idle */
	unsigned		 addr_idx;
	unsigned		 addrs_left;
	char			 addrstr[64];
	char			 why[128];	/* a failure before the event */
};

static void	dot_read_cb(struct bufferevent *, void *);
static void	dot_event_cb(struct bufferevent *, short, void *);
static void	dot_timo(evutil_socket_t, short, void *);

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
timer_set(struct dot_conn *dc, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	evtimer_add(dc->timer, &tv);
}

static void
arm_idle(struct dot_conn *dc)
{
	if (dc->ninflight == 0 && TAILQ_EMPTY(&dc->waiting))
		timer_set(dc, IDLE_TIMEOUT_MS);
}

static void
write_query(struct dot_conn *dc, struct txq *q)
{
	uint8_t frame[2] = { (uint8_t)(q->len >> 8), (uint8_t)q->len };
	uint16_t id;

	/* Random IDs keep a slow reply from matching a reused slot. */
	do {
		id = (uint16_t)arc4random();
	} while (inflight_find(dc, id) != NULL);
	q->wire_id = id;
	dnsmsg_set_id(q->msg, id);
	q->hnext = *bucket(dc, id);
	*bucket(dc, id) = q;
	TAILQ_INSERT_TAIL(&dc->inflight, q, entry);
	dc->ninflight++;
	/* Both pieces land in one output buffer and leave in one record. */
	bufferevent_write(dc->bev, frame, sizeof(frame));
	bufferevent_write(dc->bev, q->msg, q->len);
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
dot_free_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct dot_conn *dc = arg;

	(void)fd;
	(void)ev;
	tls_gate_clear(&dc->gate);
	event_free(dc->timer);
	free(dc);
}

/*
 * Stop all I/O and hand every attached query to the caller's list; the
 * struct itself is freed from a zero timeout, after the callback that
 * got here has unwound.
 */
static void
teardown(struct dot_conn *dc, struct txq_list *orphans)
{
	static const struct timeval now = { 0, 0 };
	struct txq *q;

	dc->c.state = CONN_CLOSED;
	evtimer_del(dc->timer);
	if (dc->bev != NULL) {
		bufferevent_free(dc->bev);
		dc->bev = NULL;
	}
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
	if (event_base_once(dc->base, -1, EV_TIMEOUT, dot_free_cb, dc,
	    &now) != 0)
		fatalx("%s: event_base_once failed", __func__);
}

/* The end: tell the pool, then every query that was attached. */
static void
dot_fail(struct dot_conn *dc, enum conn_outcome outcome)
{
	struct txq_list orphans = TAILQ_HEAD_INITIALIZER(orphans);
	char *json = NULL;
	struct txq *q;

	if (outcome == CONN_INCIDENT)
		json = upstream_incident_json(dc->c.up, dc->addrstr, &dc->gate);
	teardown(dc, &orphans);
	upstream_conn_event(&dc->c, outcome, json ? json :
	    "{\"event\":\"trust-incident\",\"detail\":\"out of memory\"}");
	free(json);
	while ((q = TAILQ_FIRST(&orphans)) != NULL) {
		TAILQ_REMOVE(&orphans, q, entry);
		upstream_txq_failed(&dc->c, q, outcome);
	}
}

static int
dot_connect(struct dot_conn *dc)
{
	const struct upstream_conf *uc = dc->c.up->conf;

	config_addr_str(&uc->addrs[dc->addr_idx], dc->addrstr,
	    sizeof(dc->addrstr));
	tls_gate_clear(&dc->gate);
	upstream_gate_init(dc->c.up, &dc->gate);
	dc->bev = tls_connect(dc->base, dc->c.up->ssl_ctx, uc,
	    &uc->addrs[dc->addr_idx], &dc->gate, NULL, 0, dc->why,
	    sizeof(dc->why));
	if (dc->bev == NULL)
		return -1;
	bufferevent_setcb(dc->bev, dot_read_cb, NULL, dot_event_cb, dc);
	bufferevent_enable(dc->bev, EV_READ | EV_WRITE);
	timer_set(dc, CONNECT_TIMEOUT_MS);
	return 0;
}

/*
 * This address did not give a connection.  A refusal by the gate ends the
 * connection (the upstream as a whole is at fault); anything else moves
 * on to the next bootstrap address.
 */
static void
attempt_failed(struct dot_conn *dc)
{
	const struct upstream_conf *uc = dc->c.up->conf;

	if (dc->gate.checked && dc->gate.verdict != TRUST_OK) {
		ERR_clear_error();
		dot_fail(dc, CONN_INCIDENT);
		return;
	}
	log_warnx("upstream %s: %s: %s", uc->name, dc->addrstr, dc->why);
	ERR_clear_error();
	for (;;) {
		if (dc->bev != NULL) {
			bufferevent_free(dc->bev);
			dc->bev = NULL;
		}
		if (--dc->addrs_left == 0) {
			dot_fail(dc, CONN_FAILED);
			return;
		}
		dc->addr_idx = (dc->addr_idx + 1) % (unsigned)uc->naddrs;
		dc->c.up->next_addr = dc->addr_idx;
		if (dot_connect(dc) == 0)
			return;
		log_warnx("upstream %s: %s: %s", uc->name, dc->addrstr,
		    dc->why);
	}
}

static void
dot_event_cb(struct bufferevent *bev, short events, void *arg)
{
	struct dot_conn *dc = arg;
	const struct upstream_conf *uc = dc->c.up->conf;

	(void)bev;
	if (events & BEV_EVENT_CONNECTED) {
		enum conn_outcome o = upstream_gate_outcome(&dc->gate);

		ERR_clear_error();
		if (o == CONN_FAILED)
			snprintf(dc->why, sizeof(dc->why),
			    "handshake finished without the trust gate");
		if (o == CONN_FAILED || o == CONN_INCIDENT) {
			dot_fail(dc, o);
			return;
		}
		if (o == CONN_REPORT_ONLY) {
			char *json = upstream_incident_json(dc->c.up,
			    dc->addrstr, &dc->gate);

			if (json != NULL)
				upstream_conn_event(&dc->c, o, json);
			free(json);
		}
		dc->c.state = CONN_READY;
		evtimer_del(dc->timer);
		log_debug("upstream %s: %s: connected, gate passed", uc->name,
		    dc->addrstr);
		upstream_conn_event(&dc->c, CONN_READY_OK, NULL);
		flush_waiting(dc);
		arm_idle(dc);
		return;
	}
	tls_describe_error(dc->bev, events, dc->why, sizeof(dc->why));
	if (dc->c.state == CONN_CONNECTING) {
		attempt_failed(dc);
		return;
	}
	log_debug("upstream %s: %s: %s", uc->name, dc->addrstr, dc->why);
	ERR_clear_error();
	dot_fail(dc, dc->ninflight || !TAILQ_EMPTY(&dc->waiting) ?
	    CONN_CLOSED_BUSY : CONN_CLOSED_IDLE);
}

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

static void
dot_timo(evutil_socket_t fd, short ev, void *arg)
{
	struct dot_conn *dc = arg;
	struct txq_list none = TAILQ_HEAD_INITIALIZER(none);

	(void)fd;
	(void)ev;
	if (dc->c.state == CONN_CONNECTING) {
		if (dc->why[0] == '\0')
			snprintf(dc->why, sizeof(dc->why), "timed out after "
			    "%d ms", CONNECT_TIMEOUT_MS);
		attempt_failed(dc);
		return;
	}
	/* Idle: RFC 7766 asks clients to close what they do not use. */
	log_debug("upstream %s: closing idle connection",
	    dc->c.up->conf->name);
	teardown(dc, &none);
	upstream_conn_event(&dc->c, CONN_CLOSED_IDLE, NULL);
}

static struct conn *
dot_open(struct upstream *up, struct event_base *base)
{
	static const struct timeval now = { 0, 0 };
	struct dot_conn *dc = calloc(1, sizeof(*dc));

	if (dc == NULL) {
		log_warn("%s", __func__);
		return NULL;
	}
	dc->c.ops = &dot_ops;
	dc->c.up = up;
	dc->c.state = CONN_CONNECTING;
	dc->base = base;
	TAILQ_INIT(&dc->waiting);
	TAILQ_INIT(&dc->inflight);
	dc->addrs_left = (unsigned)up->conf->naddrs;
	dc->addr_idx = up->next_addr % (unsigned)up->conf->naddrs;
	if ((dc->timer = evtimer_new(base, dot_timo, dc)) == NULL) {
		free(dc);
		return NULL;
	}
	/*
	 * A synchronous failure is reported from the timer, so the caller
	 * never sees its conn fail before open has returned.
	 */
	if (dot_connect(dc) != 0)
		evtimer_add(dc->timer, &now);
	return &dc->c;
}

static void
dot_send(struct conn *c, struct txq *q)
{
	struct dot_conn *dc = (struct dot_conn *)c;

	q->conn = c;
	if (c->state == CONN_READY) {
		evtimer_del(dc->timer);
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
