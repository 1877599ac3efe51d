/*
 * What DoT and DoH connections share: connecting over TLS with the gate,
 * walking the bootstrap addresses, judging the finished handshake, and
 * ending a connection without freeing it inside its own callback.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/bufferevent.h>
#include <openssl/err.h>

#include "stubborn/log.h"
#include "stubborn/tls.h"
#include "stubborn/upstream.h"
#include "transport.h"

#define CONNECT_TIMEOUT_MS	5000

/*
 * Read coalescing.  An upstream that writes every answer (over HTTP/2,
 * every frame) in a segment of its own wakes the loop once per segment,
 * and each wake-up costs more than the answer it brings.  While many
 * queries are in flight more answers are due at once: the socket then
 * wakes us only for COALESCE_BYTES, and a tick reads what came short of
 * it, so an answer waits at most about a millisecond longer.
 */
#define COALESCE_INFLIGHT	32
#define COALESCE_BYTES		1024
#define COALESCE_TICK_US	1000	/* the epoll backend counts in ms anyway */

static void	conn_timo_cb(evutil_socket_t, short, void *);
static void	conn_read_cb(struct bufferevent *, void *);
static void	conn_tick_cb(evutil_socket_t, short, void *);

void
conn_timer(struct conn *c, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	evtimer_add(c->timer, &tv);
}

static int
connect_one(struct conn *c, const struct conn_io *io)
{
	const struct upstream_conf *uc = c->up->conf;

	config_addr_str(&uc->addrs[c->addr_idx], c->addrstr,
	    sizeof(c->addrstr));
	c->why[0] = '\0';
	tls_gate_clear(&c->gate);
	upstream_gate_init(c->up, &c->gate);
	c->bev = tls_connect(c->base, c->up->ssl_ctx, uc,
	    &uc->addrs[c->addr_idx], &c->gate, io->alpn, io->alpn_len, c->why,
	    sizeof(c->why));
	if (c->bev == NULL)
		return -1;
	bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	conn_timer(c, CONNECT_TIMEOUT_MS);
	return 0;
}

int
conn_start(struct conn *c, const struct transport_ops *ops,
    struct upstream *up, struct event_base *base, const struct conn_io *io)
{
	c->ops = ops;
	c->io = io;
	c->up = up;
	c->state = CONN_CONNECTING;
	c->base = base;
	c->addrs_left = (unsigned)up->conf->naddrs;
	c->addr_idx = up->next_addr % (unsigned)up->conf->naddrs;
	if ((c->timer = evtimer_new(base, conn_timo_cb, c)) == NULL)
		return -1;
	if ((c->tick = event_new(base, -1, EV_PERSIST, conn_tick_cb,
	    c)) == NULL) {
		event_free(c->timer);
		return -1;
	}
	upstream_conn_add(c);
	if (connect_one(c, io) != 0)
		conn_timer(c, 0);
	return 0;
}

/*
 * This address gave no connection.  Returns true when the next address
 * is being tried; false with *outcome set (CONN_INCIDENT when the gate
 * refused the certificate, CONN_FAILED when no address is left).
 */
static bool
conn_retry(struct conn *c, enum conn_outcome *outcome)
{
	const struct conn_io *io = c->io;
	const struct upstream_conf *uc = c->up->conf;

	/* A refusal by the gate condemns the upstream, not the address. */
	if (c->gate.checked && c->gate.verdict != TRUST_OK &&
	    !c->gate.report_only) {
		ERR_clear_error();
		*outcome = CONN_INCIDENT;
		return false;
	}
	ERR_clear_error();
	for (;;) {
		/*
		 * Once it is down, its retries (one a backoff, up to a
		 * minute) fail quietly: "down" was said, and "up" will be.
		 */
		if (c->up->state == UPSTREAM_DOWN)
			log_debug("upstream %s: %s: %s", uc->name, c->addrstr,
			    c->why);
		else
			log_warnx("upstream %s: %s: %s", uc->name, c->addrstr,
			    c->why);
		if (c->bev != NULL) {
			bufferevent_free(c->bev);
			c->bev = NULL;
		}
		if (--c->addrs_left == 0) {
			*outcome = CONN_FAILED;
			return false;
		}
		c->addr_idx = (c->addr_idx + 1) % (unsigned)uc->naddrs;
		c->up->next_addr = c->addr_idx;
		if (connect_one(c, io) == 0)
			return true;
	}
}

/*
 * The handshake finished: judge it with the gate.  true: READY (reported
 * to the pool, timer stopped); false with *outcome to fail the conn with.
 */
static bool
conn_ready(struct conn *c, enum conn_outcome *outcome)
{
	const struct conn_io *io = c->io;
	enum conn_outcome o = upstream_gate_outcome(&c->gate);

	ERR_clear_error();
	if (o == CONN_FAILED)
		snprintf(c->why, sizeof(c->why),
		    "handshake finished without the trust gate");
	if (o != CONN_FAILED && o != CONN_INCIDENT && io->usable != NULL &&
	    !io->usable(c)) {
		/* Refused before READY, so its backoff grows like any failure. */
		log_warnx("upstream %s: %s: %s", c->up->conf->name, c->addrstr,
		    c->why);
		o = CONN_FAILED;
	}
	if (o == CONN_FAILED || o == CONN_INCIDENT) {
		*outcome = o;
		return false;
	}
	if (o == CONN_REPORT_ONLY) {
		char *json = upstream_incident_json(c->up, c->addrstr,
		    &c->gate);

		if (json != NULL)
			upstream_conn_event(c, o, json);
		free(json);
	}
	c->state = CONN_READY;
	evtimer_del(c->timer);
	log_debug("upstream %s: %s: connected (%s), gate passed",
	    c->up->conf->name, c->addrstr, c->ops->name);
	upstream_conn_event(c, CONN_READY_OK, NULL);
	return true;
}

/* Coalesce reads while many answers are due, not otherwise. */
static void
coalesce(struct conn *c)
{
	static const struct timeval tick = { 0, COALESCE_TICK_US };
	bool want = c->state == CONN_READY &&
	    c->io->inflight(c) >= COALESCE_INFLIGHT;
	int lowat = want ? COALESCE_BYTES : 1;

	if (want == c->coalescing)
		return;
	if (setsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_RCVLOWAT,
	    &lowat, sizeof(lowat)) != 0)
		return;
	c->coalescing = want;
	if (want)
		event_add(c->tick, &tick);
	else
		event_del(c->tick);
}

/*
 * ACK what came, now.  Linux delays an ACK hoping to send it with the next
 * query; an upstream that leaves Nagle's algorithm on (unbound's DoT does)
 * then holds its next small answer until that ACK: up to 40 ms, at a few
 * thousand queries a second.  Only answers still due can be held that way;
 * and while reads coalesce, queries leave often enough to carry the ACKs,
 * where an ACK per segment would cost more.
 */
static void
quickack(struct conn *c)
{
	int one = 1;

	setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_QUICKACK, &one,
	    sizeof(one));
}

/* The transport's reader, then again for records already received. */
static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	do
		c->io->read(bev, c);
	while (c->bev == bev && c->state != CONN_CLOSED && tls_drain(bev));
	if (c->bev == bev && c->state == CONN_READY) {
		coalesce(c);
		if (!c->coalescing && c->io->inflight(c) > 0)
			quickack(c);
	}
}

/* Read what is there, short of the low-water mark or not. */
static void
conn_tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)ev;
	if (c->state != CONN_READY) {
		event_del(c->tick);
		return;
	}
	event_base_active_by_fd(c->base, bufferevent_getfd(c->bev), EV_READ);
	coalesce(c);
}

void
conn_event_cb(struct bufferevent *bev, short events, void *arg)
{
	struct conn *c = arg;
	enum conn_outcome o;

	if (events & BEV_EVENT_CONNECTED) {
		if (!conn_ready(c, &o)) {
			c->io->fail(c, o);
			return;
		}
		c->io->started(c);
		/* The handshake's reads may have pulled in the first records. */
		if (c->bev == bev && c->state == CONN_READY && tls_drain(bev))
			conn_read_cb(bev, c);
		return;
	}
	tls_describe_error(bev, events, c->why, sizeof(c->why));
	if (c->state == CONN_CONNECTING) {
		if (!conn_retry(c, &o))
			c->io->fail(c, o);
		return;
	}
	log_debug("upstream %s: %s: %s", c->up->conf->name, c->addrstr,
	    c->why);
	ERR_clear_error();
	c->io->fail(c, c->io->busy(c) ? CONN_CLOSED_BUSY : CONN_CLOSED_IDLE);
}

static void
conn_timo_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct conn *c = arg;
	enum conn_outcome o;

	(void)fd;
	(void)ev;
	if (c->state != CONN_CONNECTING) {
		c->io->idle(c);
		return;
	}
	if (c->why[0] == '\0')
		snprintf(c->why, sizeof(c->why), "timed out");
	if (!conn_retry(c, &o))
		c->io->fail(c, o);
}

static void
free_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)ev;
	tls_gate_clear(&c->gate);
	event_free(c->timer);
	event_free(c->tick);
	c->free_fn(c);
}

void
conn_stop(struct conn *c, void (*free_fn)(struct conn *))
{
	static const struct timeval now = { 0, 0 };

	c->state = CONN_CLOSED;
	evtimer_del(c->timer);
	event_del(c->tick);
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	upstream_conn_remove(c);
	c->free_fn = free_fn;
	if (event_base_once(c->base, -1, EV_TIMEOUT, free_cb, c, &now) != 0)
		fatalx("%s: event_base_once failed", __func__);
}

void
conn_report(struct conn *c, enum conn_outcome outcome,
    struct txq_list *orphans)
{
	char *json = NULL;
	struct txq *q;

	/*
	 * A query may end while others are told (its other attempt answered
	 * or failed): upstream_cancel then takes it off this list.
	 */
	TAILQ_FOREACH(q, orphans, entry)
		q->orphans = orphans;
	if (outcome == CONN_INCIDENT)
		json = upstream_incident_json(c->up, c->addrstr, &c->gate);
	upstream_conn_event(c, outcome, json ? json :
	    "{\"event\":\"trust-incident\",\"detail\":\"out of memory\"}");
	free(json);
	while ((q = TAILQ_FIRST(orphans)) != NULL) {
		TAILQ_REMOVE(orphans, q, entry);
		q->orphans = NULL;
		upstream_txq_failed(c, q, outcome);
	}
}
