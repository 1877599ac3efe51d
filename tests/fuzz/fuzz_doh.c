/*
 * A DoH server's bytes (HTTP/2 frames), through stubborn's own DoH
 * transport: a real nghttp2 client session driven by src/doh.c, opened by
 * the real upstream pool, with queries as the resolver sends them.
 *
 * doh.c keeps everything but doh_ops static, so this file includes it:
 * the callbacks, start_h2 and doh_io are then in reach without a test
 * seam in the daemon's code.  The archive's doh.o is never linked (its
 * only external symbol, doh_ops, is defined here first).
 *
 * What is not real is the TLS: the pool opens the connection as always
 * (upstream_send, doh_open, conn_start, tls_connect to a bootstrap
 * address that fails at once, 255.255.255.255), then the socket is
 * swapped for one end of a bufferevent pair and the connection is made
 * READY as conn_ready does once the gate has passed; the fuzz input is
 * what the server writes into the other end.  The connection timer is the
 * real one, so the idle PING and the idle close run through conn_timo_cb.
 *
 * Input: a setup byte, then chunks separated by SPLIT.  Setup bits 0-1:
 * queries queued while connecting, less one (1-4); bit 2: the server's
 * empty SETTINGS frame goes first, so inputs need not carry it.  A chunk
 * is an action byte and the server bytes delivered in one write; once the
 * event loop has taken them the actions run: bit 0, the connection timer
 * fires (when armed); bit 1, the oldest query in flight times out; bit 2,
 * one more query is sent (while the pool still uses the connection);
 * bit 3, the server closes the connection (the rest is ignored).
 *
 * Queries are failed over as the resolver does with one upstream: a
 * query whose stream was refused (retry_same) is sent once more on the
 * same connection, from inside the callback; anything else ends it.  The
 * callbacks check that a query is reported once, only while it is sent,
 * never after a time-out took it back, and that an answer matches it.
 *
 * STUBBORN_FUZZ_DEBUG=1 in the environment logs at debug level and says
 * how each query ended.
 */
#include "doh.c"

#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <syslog.h>

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define SPLIT		"\n--split--\n"
#define QUERIES_MAX	8
#define SPIN_PASSES	4

enum act {
	ACT_TIMER = 1 << 0,
	ACT_TIMEOUT = 1 << 1,
	ACT_SEND = 1 << 2,
	ACT_EOF = 1 << 3,
};

enum qstate { Q_IDLE, Q_SENT, Q_ANSWERED, Q_FAILED, Q_TIMED_OUT };

struct fquery {
	struct txq	tx;	/* first: the pool hands back &fq->tx */
	enum qstate	state;
	bool		retried_same;
	uint8_t		msg[64];
};

static const char conf[] =
    "[server]\n"
    "state-dir = /nonexistent/stubborn-fuzz\n"
    "[trust]\n"
    "ct = off\n"
    "[upstream fuzz]\n"
    "url = https://dns.test/dns-query\n"
    "address = 255.255.255.255\n";

/* Four questions (the seed generator asks the same); slot i asks i % 4. */
static const struct {
	const char	*name;
	uint16_t	 type;
} questions[] = {
	{ "\1a\4zone\4test", 1 },	/* A */
	{ "\1b\4zone\4test", 28 },	/* AAAA */
	{ "\1c\4zone\4test", 16 },	/* TXT */
	{ "\3www\4zone\4test", 1 },
};

static struct event_base	*base;
static struct config		*cfg;
static struct upstream		*up;
static struct fquery		 fq[QUERIES_MAX];
static size_t			 nfq;
static bool			 debug;

static void
check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_doh: %s\n", what);
		abort();
	}
}

static void
spin(void)
{
	for (int i = 0; i < SPIN_PASSES; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
}

static void
query_init(struct fquery *q, size_t i)
{
	const char *name = questions[i % 4].name;
	size_t nl = strlen(name) + 1;
	uint8_t *m = q->msg;

	memset(q, 0, sizeof(*q));
	m[0] = 0x12;
	m[1] = (uint8_t)(0x30 + i);
	m[2] = 0x01;			/* RD */
	m[5] = 1;			/* QDCOUNT */
	memcpy(m + DNSMSG_HDR_LEN, name, nl);
	m[DNSMSG_HDR_LEN + nl] = 0;
	m[DNSMSG_HDR_LEN + nl + 1] = (uint8_t)questions[i % 4].type;
	m[DNSMSG_HDR_LEN + nl + 2] = 0;
	m[DNSMSG_HDR_LEN + nl + 3] = 1;	/* IN */
	q->tx.msg = m;
	q->tx.qend = q->tx.len = DNSMSG_HDR_LEN + nl + 4;
	q->state = Q_IDLE;
}

/* As the resolver's dispatch: the pool's upstream takes the query. */
static void
query_send(struct fquery *q)
{
	q->state = Q_SENT;
	upstream_send(up, &q->tx);
}

static bool
reply_cb(void *arg, struct txq *tx, uint8_t *msg, size_t len)
{
	static uint8_t copy[DNSMSG_MAX_LEN + 11];
	struct fquery *q = (struct fquery *)tx;

	(void)arg;
	check(q->state == Q_SENT, "an answer for a query not in flight");
	check(tx->conn == NULL, "an answer for a query still attached");
	check(len >= DNSMSG_HDR_LEN && len <= DNSMSG_MAX_LEN,
	    "an answer of impossible length");
	check(dnsmsg_reply_matches(msg, len, tx->msg, tx->qend),
	    "an answer to another question");
	/* The resolver's judgement: a malformed answer is failed over. */
	memcpy(copy, msg, len);
	if (dnsmsg_reply_normalize(copy, len, sizeof(copy), 60) == 0)
		return false;
	q->state = Q_ANSWERED;
	return true;
}

static void
failed_cb(void *arg, struct txq *tx, struct upstream *u, bool retry_same)
{
	struct fquery *q = (struct fquery *)tx;

	(void)arg;
	check(q->state == Q_SENT, "a failure for a query not in flight");
	check(tx->conn == NULL, "a failure for a query still attached");
	check(u == up, "a failure from another upstream");
	q->state = Q_FAILED;
	/*
	 * The resolver's failed_cb and dispatch with one upstream: once more
	 * on the same upstream after a refused stream, at once.  A new
	 * connection is where this test stops following.
	 */
	if (retry_same && !q->retried_same && up->conn != NULL) {
		q->retried_same = true;
		query_send(q);
	}
}

static void
setup(void)
{
	FILE *devnull = fopen("/dev/null", "w");
	char path[64];
	int fd;

	debug = getenv("STUBBORN_FUZZ_DEBUG") != NULL;
	log_setlevel(debug ? LOG_DEBUG : LOG_ERR);
	tls_init();
	if ((base = event_base_new()) == NULL ||
	    (fd = memfd_create("conf", 0)) == -1 ||
	    write(fd, conf, sizeof(conf) - 1) != (ssize_t)sizeof(conf) - 1)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	cfg = config_load(path, true, devnull ? devnull : stderr);
	close(fd);
	if (devnull != NULL)
		fclose(devnull);
	check(cfg != NULL, "the conf does not load");
}

/* The oldest query attached to a stream or waiting. */
static struct fquery *
oldest_in_flight(void)
{
	for (size_t i = 0; i < nfq; i++)
		if (fq[i].state == Q_SENT && fq[i].tx.conn != NULL)
			return &fq[i];
	return NULL;
}

/* One chunk's actions; false when the connection is over for this input. */
static bool
act(struct conn *c, struct bufferevent *server, unsigned a)
{
	struct fquery *q;

	/* The conn is gone (or going) once its bufferevent was freed. */
	if (bufferevent_pair_get_partner(server) == NULL)
		return false;
	if ((a & ACT_TIMER) && evtimer_pending(c->timer, NULL)) {
		evtimer_del(c->timer);
		event_active(c->timer, EV_TIMEOUT, 1);
		spin();
		if (bufferevent_pair_get_partner(server) == NULL)
			return false;
	}
	if ((a & ACT_TIMEOUT) && (q = oldest_in_flight()) != NULL) {
		/*
		 * The resolver's query_timo at the deadline, with one
		 * upstream: the query is given up (cancelled), then its
		 * timeout counted.  (At 1.5 s the resolver keeps it attached;
		 * a late answer is then an ordinary one.)
		 */
		q->state = Q_TIMED_OUT;
		upstream_cancel(&q->tx);
		upstream_note_timeout(up, &q->tx);
		check(q->tx.conn == NULL, "cancel left the query attached");
		spin();
		if (bufferevent_pair_get_partner(server) == NULL)
			return false;
	}
	if ((a & ACT_SEND) && nfq < QUERIES_MAX && up->conn != NULL) {
		query_init(&fq[nfq], nfq);
		query_send(&fq[nfq++]);
		spin();
		if (bufferevent_pair_get_partner(server) == NULL)
			return false;
	}
	if (a & ACT_EOF) {
		bufferevent_flush(server, EV_WRITE, BEV_FINISHED);
		spin();
		return false;
	}
	return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	static const uint8_t settings[9] = { 0, 0, 0, 4, 0, 0, 0, 0, 0 };
	const struct upstream_cbs cbs = { reply_cb, failed_cb, NULL };
	struct bufferevent *pair[2];
	struct upstream_pool *pool;
	const uint8_t *p, *end = data + len;
	struct conn *c;
	unsigned setup_bits, nq, i;

	if (len < 1)
		return 0;
	if (base == NULL)
		setup();
	setup_bits = data[0];
	nq = 1 + (setup_bits & 3);
	if ((pool = upstream_pool_new(base, cfg, NULL, &cbs)) == NULL)
		abort();
	up = upstream_pool_get(pool, 0);

	/* The pool opens the connection; the queries wait for the gate. */
	nfq = 0;
	for (i = 0; i < nq; i++) {
		query_init(&fq[nfq], nfq);
		query_send(&fq[nfq++]);
	}
	c = up->conn;
	check(c != NULL && c->state == CONN_CONNECTING, "no connection opened");
	for (i = 0; i < nq; i++)
		check(fq[i].state == Q_SENT, "a query failed before connecting");

	/* Its socket becomes our end of a pair: the server writes the other. */
	if (bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE |
	    BEV_OPT_DEFER_CALLBACKS, pair) != 0)
		abort();
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	c->bev = pair[0];
	c->why[0] = '\0';
	ERR_clear_error();
	bufferevent_setcb(c->bev, c->io->read, NULL, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	bufferevent_enable(pair[1], EV_READ | EV_WRITE);

	/* The handshake finished and the gate passed: conn_ready's part. */
	c->state = CONN_READY;
	evtimer_del(c->timer);
	upstream_conn_event(c, CONN_READY_OK, NULL);
	c->io->started(c);
	spin();

	if (setup_bits & 4)
		bufferevent_write(pair[1], settings, sizeof(settings));
	for (p = data + 1; p < end; ) {
		const uint8_t *next = memmem(p, (size_t)(end - p), SPLIT,
		    sizeof(SPLIT) - 1);
		const uint8_t *stop = next ? next : end;
		unsigned a = p < stop ? *p++ : 0;

		if (bufferevent_pair_get_partner(pair[1]) == NULL)
			break;
		if (p < stop)
			bufferevent_write(pair[1], p, (size_t)(stop - p));
		spin();
		evbuffer_drain(bufferevent_get_input(pair[1]),
		    evbuffer_get_length(bufferevent_get_input(pair[1])));
		if (!act(c, pair[1], a))
			break;
		p = next ? next + sizeof(SPLIT) - 1 : end;
	}
	spin();

	/* The pool closes what is left (a draining conn too), then frees. */
	upstream_pool_free(pool);
	spin();
	bufferevent_free(pair[1]);
	spin();
	for (i = 0; i < nfq; i++) {
		static const char *const qstate_str[] = { "not sent", "sent",
		    "answered", "failed", "timed out" };

		check(fq[i].tx.conn == NULL && fq[i].tx.tdata == NULL,
		    "a query still attached after the pool was freed");
		if (debug)
			fprintf(stderr, "query %u: %s%s\n", i,
			    qstate_str[fq[i].state],
			    fq[i].retried_same ? " (sent twice)" : "");
	}
	check(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED |
	    EVENT_BASE_COUNT_ACTIVE | EVENT_BASE_COUNT_VIRTUAL) == 0,
	    "events left behind");
	ERR_clear_error();
	return 0;
}
