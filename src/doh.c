/*
 * DNS over HTTPS (RFC 8484) over HTTP/2 with nghttp2: one connection per
 * upstream, one stream per query (POST application/dns-message, message
 * ID 0), as many streams at once as the server allows; the rest wait in
 * the connection's queue until a stream closes.
 */
#include "config.h"

#include <ctype.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>

#include "stubborn/dnsmsg.h"
#include "stubborn/log.h"
#include "stubborn/mpool.h"
#include "stubborn/tls.h"
#include "stubborn/upstream.h"
#include "transport.h"

#define PING_IDLE_MS		10000	/* an idle connection is pinged... */
#define IDLE_TICKS_CLOSE	3	/* ...and closed at this tick: 30 s */
#define BODY_MAX		DNSMSG_MAX_LEN
#define DNS_MESSAGE		"application/dns-message"
#define BODY_INLINE		512	/* most answers fit: no allocation */
/*
 * Streams in flight on one connection, whatever the server allows:
 * knot-resolver offers 65535 but stops reading past its pipeline limit
 * (100 queries) and may not resume on what it already holds.
 */
#define STREAMS_MAX		100

static const unsigned char alpn_h2[] = { 2, 'h', '2' };

/*
 * One query's stream, in one allocation with its query and, unless it is
 * longer, its answer; freed when nghttp2 closes the stream.
 */
struct doh_stream {
	TAILQ_ENTRY(doh_stream)	 entry;
	struct txq		*q;	/* NULL once cancelled */
	int32_t			 id;
	size_t			 req_len;
	size_t			 req_off;
	int			 status;
	bool			 final;		/* a status past 1xx is in */
	bool			 head_done;	/* its block: now trailers */
	bool			 malformed;	/* RFC 9113 8.1 */
	bool			 ended;		/* END_STREAM came */
	bool			 ctype_ok;
	bool			 too_big;
	char			 clen[8];	/* content-length, unterminated */
	uint8_t			*body;	/* inline, or grown on the heap */
	size_t			 len;
	size_t			 cap;
	uint8_t			 inline_body[BODY_INLINE];
	uint8_t			 req[];	/* the query, ID 0 */
};
TAILQ_HEAD(doh_stream_list, doh_stream);

struct doh_conn {
	struct conn		 c;	/* first: the pool sees a struct conn */
	nghttp2_session		*h2;
	struct txq_list		 waiting;	/* for the gate, or a stream:
						   see can_open */
	struct doh_stream_list	 streams;
	size_t			 nstreams;
	unsigned		 idle_pings;
	bool			 ping_out;
	bool			 in_h2;		/* inside nghttp2_session_mem_recv
						   or _mem_send */
	bool			 draining;	/* GOAWAY: no new streams */
	bool			 broken;	/* fail once the callback returns */
	char			 authority[280];
	struct event		*push_ev;	/* sends obuf at the end of the pass */
	size_t			 olen;
	uint8_t			 obuf[16384];	/* whole frames: one TLS record */
};

static void	doh_read_cb(struct bufferevent *, void *);

static void
stream_free(struct doh_stream *st)
{
	if (st->body != st->inline_body)
		free(st->body);
	mpool_free(st);
}

static void
doh_free(struct conn *c)
{
	event_free(((struct doh_conn *)c)->push_ev);
	free(c);
}

/* Stop all I/O and hand every attached query to the caller's list. */
static void
teardown(struct doh_conn *dc, struct txq_list *orphans)
{
	struct doh_stream *st;
	struct txq *q;

	while ((st = TAILQ_FIRST(&dc->streams)) != NULL) {
		TAILQ_REMOVE(&dc->streams, st, entry);
		if ((q = st->q) != NULL) {
			q->conn = NULL;
			q->tdata = NULL;
			TAILQ_INSERT_TAIL(orphans, q, entry);
		}
		stream_free(st);
	}
	dc->nstreams = 0;
	while ((q = TAILQ_FIRST(&dc->waiting)) != NULL) {
		TAILQ_REMOVE(&dc->waiting, q, entry);
		q->conn = NULL;
		TAILQ_INSERT_TAIL(orphans, q, entry);
	}
	nghttp2_session_del(dc->h2);
	dc->h2 = NULL;
	event_del(dc->push_ev);
	dc->olen = 0;
	conn_stop(&dc->c, doh_free);
}

static void
doh_fail(struct doh_conn *dc, enum conn_outcome outcome)
{
	struct txq_list orphans = TAILQ_HEAD_INITIALIZER(orphans);

	if (dc->c.state == CONN_CLOSED)
		return;
	teardown(dc, &orphans);
	conn_report(&dc->c, outcome, &orphans);
}

static void
free_ref(const void *data, size_t len, void *arg)
{
	(void)len;
	(void)arg;
	free((void *)data);
}

/*
 * Hand bytes to TLS in one SSL_write, so in one record when they fit one:
 * straight to the socket, or, while earlier bytes still wait there, as a
 * chain of their own in the bufferevent (libevent writes each chain with
 * one SSL_write; bytes added by copy may be split across two chains).
 * A bufferevent without TLS (the fuzzer's pair) takes them as they are.
 */
static void
emit(struct doh_conn *dc, const uint8_t *data, size_t len)
{
	struct evbuffer *out = bufferevent_get_output(dc->c.bev);
	SSL *ssl = bufferevent_openssl_get_ssl(dc->c.bev);
	uint8_t *copy;
	int n = 0, err;

	if (ssl != NULL && evbuffer_get_length(out) == 0) {
		ERR_clear_error();
		if ((n = SSL_write(ssl, data, (int)len)) <= 0) {
			err = SSL_get_error(ssl, n);
			ERR_clear_error();
			if (err != SSL_ERROR_WANT_WRITE &&
			    err != SSL_ERROR_WANT_READ) {
				snprintf(dc->c.why, sizeof(dc->c.why),
				    "TLS write failed");
				dc->broken = true;
				return;
			}
			/* OpenSSL holds a part: libevent's retry sends it. */
			n = 0;
		}
	}
	if ((size_t)n == len)
		return;
	if ((copy = malloc(len - (size_t)n)) == NULL ||
	    (memcpy(copy, data + n, len - (size_t)n),
	    evbuffer_add_reference(out, copy, len - (size_t)n, free_ref,
	    NULL) != 0)) {
		free(copy);
		snprintf(dc->c.why, sizeof(dc->c.why), "out of memory");
		dc->broken = true;
	}
}

/* Send what flush gathered. */
static void
push(struct doh_conn *dc)
{
	if (dc->olen > 0 && dc->c.state == CONN_READY && !dc->broken)
		emit(dc, dc->obuf, dc->olen);
	dc->olen = 0;
}

/*
 * Gather nghttp2's pending frames; push sends them once this loop pass is
 * done with its events, so the queries of a batch of datagrams leave in
 * one record and one write.  Records hold whole frames: knot-resolver,
 * for one, loses a request whose DATA frame arrives in two.
 */
static void
flush(struct doh_conn *dc)
{
	const uint8_t *data;
	ssize_t n;

	if (dc->in_h2 || dc->h2 == NULL)
		return;		/* nghttp2 forbids sending from its callbacks */
	dc->in_h2 = true;
	while ((n = nghttp2_session_mem_send(dc->h2, &data)) > 0) {
		if (dc->olen + (size_t)n > sizeof(dc->obuf))
			push(dc);
		if ((size_t)n > sizeof(dc->obuf))
			emit(dc, data, (size_t)n);	/* more than a record */
		else {
			memcpy(dc->obuf + dc->olen, data, (size_t)n);
			dc->olen += (size_t)n;
		}
	}
	dc->in_h2 = false;
	if (n < 0) {
		snprintf(dc->c.why, sizeof(dc->c.why), "HTTP/2: %s",
		    nghttp2_strerror((int)n));
		dc->broken = true;
	}
	if (dc->olen > 0)
		event_active(dc->push_ev, EV_WRITE, 1);
}

/*
 * After I/O: act on a broken session, or a drained one.  Never from
 * inside nghttp2 (the session must outlive the call): whoever called
 * nghttp2 settles once it has returned.
 */
static void
settle(struct doh_conn *dc)
{
	struct txq_list none = TAILQ_HEAD_INITIALIZER(none);

	if (dc->c.state != CONN_READY || dc->in_h2)
		return;
	if (dc->broken || (!nghttp2_session_want_read(dc->h2) &&
	    !nghttp2_session_want_write(dc->h2))) {
		log_debug("upstream %s: %s: %s", dc->c.up->conf->name,
		    dc->c.addrstr, dc->broken ? dc->c.why : "session ended");
		doh_fail(dc, dc->nstreams ? CONN_CLOSED_BUSY :
		    CONN_CLOSED_IDLE);
		return;
	}
	if (dc->draining && dc->nstreams == 0) {
		teardown(dc, &none);
		upstream_conn_event(&dc->c, CONN_CLOSED_IDLE, NULL);
		return;
	}
	if (dc->nstreams == 0 && !evtimer_pending(dc->c.timer, NULL))
		conn_timer(&dc->c, PING_IDLE_MS);
}

static void
push_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct doh_conn *dc = arg;

	(void)fd;
	(void)ev;
	push(dc);
	settle(dc);
}

static ssize_t
body_read_cb(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len,
    uint32_t *flags, nghttp2_data_source *src, void *arg)
{
	struct doh_stream *st = src->ptr;
	size_t n = st->req_len - st->req_off;

	(void)h2;
	(void)id;
	(void)arg;
	if (n > len)
		n = len;
	memcpy(buf, st->req + st->req_off, n);
	st->req_off += n;
	if (st->req_off == st->req_len)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

static int
on_header_cb(nghttp2_session *h2, const nghttp2_frame *frame,
    const uint8_t *name, size_t namelen, const uint8_t *value,
    size_t valuelen, uint8_t flags, void *arg)
{
	struct doh_stream *st;

	(void)flags;
	(void)arg;
	if (frame->hd.type != NGHTTP2_HEADERS ||
	    (st = nghttp2_session_get_stream_user_data(h2,
	    frame->hd.stream_id)) == NULL)
		return 0;
	if (st->head_done) {
		/* Trailers: no pseudo-header, and nothing else counts. */
		if (namelen > 0 && name[0] == ':')
			st->malformed = true;
		return 0;
	}
	if (namelen > 0 && name[0] == ':') {
		/*
		 * One :status per response and no other pseudo-header (RFC
		 * 9113 8.1, 8.3.2): nghttp2's own checks are off (see
		 * h2_option).
		 */
		if (namelen != 7 || memcmp(name, ":status", 7) != 0 ||
		    st->final) {
			st->malformed = true;
			return 0;
		}
		/* Three digits, or no status we take. */
		st->status = -1;
		if (valuelen == 3 && isdigit(value[0]) && isdigit(value[1]) &&
		    isdigit(value[2]))
			st->status = (value[0] - '0') * 100 +
			    (value[1] - '0') * 10 + (value[2] - '0');
		/* An informational response (103) precedes the final one. */
		st->final = st->status < 100 || st->status >= 200;
	} else if (st->final && namelen == 12 &&
	    memcmp(name, "content-type", 12) == 0) {
		/*
		 * The final response's own type (not a 1xx's), parameters
		 * aside, case-insensitive.
		 */
		size_t l = strlen(DNS_MESSAGE);

		st->ctype_ok = valuelen >= l &&
		    strncasecmp((const char *)value, DNS_MESSAGE, l) == 0 &&
		    (valuelen == l || value[l] == ';' || value[l] == ' ');
	}
	return 0;
}

static int
on_data_cb(nghttp2_session *h2, uint8_t flags, int32_t id,
    const uint8_t *data, size_t len, void *arg)
{
	struct doh_stream *st = nghttp2_session_get_stream_user_data(h2, id);

	(void)flags;
	(void)arg;
	if (st == NULL || st->too_big)
		return 0;
	if (!st->final)
		st->malformed = true;	/* a body before its status */
	if (st->len + len > BODY_MAX) {
		/* No DNS message is that long: stop the stream, not the rest. */
		st->too_big = true;
		nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, id,
		    NGHTTP2_CANCEL);
		return 0;
	}
	if (st->len + len > st->cap) {
		size_t cap = st->cap;
		uint8_t *b;

		while (cap < st->len + len)
			cap *= 2;
		if (cap > BODY_MAX)
			cap = BODY_MAX;
		if ((b = malloc(cap)) == NULL)
			return NGHTTP2_ERR_CALLBACK_FAILURE;
		memcpy(b, st->body, st->len);
		if (st->body != st->inline_body)
			free(st->body);
		st->body = b;
		st->cap = cap;
	}
	memcpy(st->body + st->len, data, len);
	st->len += len;
	return 0;
}

static int
on_stream_close_cb(nghttp2_session *h2, int32_t id, uint32_t error,
    void *arg)
{
	struct doh_conn *dc = arg;
	struct doh_stream *st = nghttp2_session_get_stream_user_data(h2, id);
	struct txq *q;
	const char *bad = NULL;

	if (st == NULL)
		return 0;
	TAILQ_REMOVE(&dc->streams, st, entry);
	dc->nstreams--;
	if ((q = st->q) == NULL) {
		stream_free(st);
		return 0;
	}
	q->conn = NULL;
	q->tdata = NULL;
	/* Our own reset of an oversized body says less than its reason. */
	if (st->too_big)
		bad = "body longer than a DNS message";
	else if (error != NGHTTP2_NO_ERROR)
		bad = nghttp2_http2_strerror(error);
	else if (st->malformed)
		bad = "malformed response";
	else if (!st->ended)
		bad = "stream reset before the response ended";
	else if (st->status != 200)
		bad = "HTTP status other than 200";
	else if (!st->ctype_ok)
		bad = "content-type is not " DNS_MESSAGE;
	else if (st->len < DNSMSG_HDR_LEN ||
	    !dnsmsg_reply_matches(st->body, st->len, q->msg, q->qend))
		bad = "body is not the answer to the query";
	if (bad == NULL)
		upstream_txq_reply(&dc->c, q, st->body, st->len);
	else {
		/*
		 * A refused stream was never seen (RFC 9113 8.7): by a GOAWAY,
		 * or past the server's stream limit before its SETTINGS came.
		 * It is asked again, and says nothing against the upstream.
		 */
		bool refused = error == NGHTTP2_REFUSED_STREAM;

		log_debug("upstream %s: stream %d: %s (status %d)",
		    dc->c.up->conf->name, id, bad, st->status);
		if (!refused)
			upstream_note_failure(dc->c.up, bad);
		upstream_txq_failed(&dc->c, q, refused ? CONN_CLOSED_BUSY :
		    CONN_FAILED);
	}
	stream_free(st);
	return 0;
}

static int
on_frame_recv_cb(nghttp2_session *h2, const nghttp2_frame *frame, void *arg)
{
	struct doh_conn *dc = arg;
	struct txq *q;

	/*
	 * Only END_STREAM ends a response: RST_STREAM(NO_ERROR) may follow
	 * one, never cut it short (RFC 9113 8.1).  After the final status's
	 * block, header fields are trailers.
	 */
	if (frame->hd.type == NGHTTP2_HEADERS ||
	    (frame->hd.type == NGHTTP2_DATA &&
	    (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))) {
		struct doh_stream *st = nghttp2_session_get_stream_user_data(h2,
		    frame->hd.stream_id);

		if (st != NULL) {
			if (frame->hd.type == NGHTTP2_HEADERS && st->final)
				st->head_done = true;
			if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
				st->ended = true;
		}
	} else if (frame->hd.type == NGHTTP2_PING &&
	    (frame->hd.flags & NGHTTP2_FLAG_ACK))
		dc->ping_out = false;
	else if (frame->hd.type == NGHTTP2_GOAWAY && !dc->draining) {
		/* Finish what the server took; new queries get a new one. */
		dc->draining = true;
		/* Stream 1 on: it will answer what it took (upstream.c). */
		if (frame->goaway.last_stream_id > 0)
			dc->c.served = true;
		log_debug("upstream %s: GOAWAY, last stream %d",
		    dc->c.up->conf->name, frame->goaway.last_stream_id);
		upstream_conn_event(&dc->c, CONN_DRAINING, NULL);
		/* Queries not yet on a stream go to the next connection. */
		while ((q = TAILQ_FIRST(&dc->waiting)) != NULL) {
			TAILQ_REMOVE(&dc->waiting, q, entry);
			q->conn = NULL;
			upstream_txq_failed(&dc->c, q, CONN_CLOSED_BUSY);
		}
	}
	return 0;
}

static nghttp2_session_callbacks *
callbacks(void)
{
	static nghttp2_session_callbacks *cbs;

	if (cbs == NULL) {
		if (nghttp2_session_callbacks_new(&cbs) != 0)
			fatalx("%s: out of memory", __func__);
		nghttp2_session_callbacks_set_on_header_callback(cbs,
		    on_header_cb);
		nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs,
		    on_data_cb);
		nghttp2_session_callbacks_set_on_stream_close_callback(cbs,
		    on_stream_close_cb);
		nghttp2_session_callbacks_set_on_frame_recv_callback(cbs,
		    on_frame_recv_cb);
	}
	return cbs;
}

/* nghttp2's streams, frames and header buffers come from the pool. */
static void *
h2_malloc(size_t n, void *arg)
{
	(void)arg;
	return mpool_alloc(n);
}

static void
h2_free(void *p, void *arg)
{
	(void)arg;
	mpool_free(p);
}

static void *
h2_calloc(size_t nmemb, size_t n, void *arg)
{
	(void)arg;
	return mpool_calloc(nmemb, n);
}

static void *
h2_realloc(void *p, size_t n, void *arg)
{
	(void)arg;
	return mpool_realloc(p, n);
}

static nghttp2_mem h2_mem = {
	NULL, h2_malloc, h2_free, h2_calloc, h2_realloc
};

/* v (under 10^7) in decimal, unterminated; snprintf costs more per query. */
static size_t
decimal(char *buf, size_t v)
{
	char tmp[8];
	size_t n = 0, i;

	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) > 0 && n < sizeof(tmp));
	for (i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

/* Open a stream for q.  Fails q back to the pool when it cannot. */
static void
submit(struct doh_conn *dc, struct txq *q)
{
	const struct upstream_conf *uc = dc->c.up->conf;
	struct doh_stream *st = mpool_alloc(sizeof(*st) + q->len);
	nghttp2_data_provider body;
	/*
	 * nghttp2 keeps these pointers until the HEADERS frame is sent,
	 * mostly at once: every value lives as long as the stream
	 * (content-length is in it) or the connection, so none is copied.
	 */
#define NV(n, v)	{ (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, \
			  strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME | \
			  NGHTTP2_NV_FLAG_NO_COPY_VALUE }
	nghttp2_nv hdrs[] = {
		NV(":method", "POST"),
		NV(":scheme", "https"),
		NV(":authority", dc->authority),
		NV(":path", uc->path),
		NV("content-type", DNS_MESSAGE),
		NV("accept", DNS_MESSAGE),
		NV("content-length", ""),
	};
#undef NV

	if (st == NULL) {
		upstream_txq_failed(&dc->c, q, CONN_FAILED);
		return;
	}
	/* Only the header fields, not the inline buffers, need clearing. */
	memset(st, 0, offsetof(struct doh_stream, inline_body));
	st->body = st->inline_body;
	st->cap = sizeof(st->inline_body);
	hdrs[6].value = (uint8_t *)st->clen;
	hdrs[6].valuelen = decimal(st->clen, q->len);
	memcpy(st->req, q->msg, q->len);
	/* RFC 8484 4.1: ID 0, so identical queries are cacheable. */
	dnsmsg_set_id(st->req, 0);
	st->req_len = q->len;
	body.source.ptr = st;
	body.read_callback = body_read_cb;
	st->id = nghttp2_submit_request(dc->h2, NULL, hdrs,
	    sizeof(hdrs) / sizeof(hdrs[0]), &body, st);
	if (st->id < 0) {
		log_debug("upstream %s: %s", uc->name,
		    nghttp2_strerror(st->id));
		stream_free(st);
		upstream_txq_failed(&dc->c, q, CONN_FAILED);
		return;
	}
	st->q = q;
	q->conn = &dc->c;
	q->tdata = st;
	dc->c.up->stats.queries++;
	TAILQ_INSERT_TAIL(&dc->streams, st, entry);
	dc->nstreams++;
	dc->idle_pings = 0;
	evtimer_del(dc->c.timer);
}

/*
 * Whether q may have a stream now.  Some servers (knot-resolver) take one
 * request at a time: a stream whose HEADERS come while another stream's
 * body is still due is refused.  nghttp2 sends every pending HEADERS
 * before any DATA, so a query is handed to it only once the one before has
 * left whole, and only when it will not wait there for a stream slot or
 * for the window its body needs.
 */
static bool
can_open(struct doh_conn *dc, const struct txq *q)
{
	if (dc->nstreams == 0)
		return true;	/* nothing else would open the way */
	return dc->nstreams < STREAMS_MAX &&
	    dc->nstreams < nghttp2_session_get_remote_settings(dc->h2,
	    NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) &&
	    nghttp2_session_get_remote_window_size(dc->h2) >= (int32_t)q->len;
}

/* Give waiting queries their streams, each sent whole, then flush. */
static void
kick(struct doh_conn *dc)
{
	struct txq *q;

	if (dc->in_h2 || dc->h2 == NULL)
		return;		/* its caller kicks once nghttp2 returned */
	while (dc->c.state == CONN_READY && !dc->broken && !dc->draining &&
	    (q = TAILQ_FIRST(&dc->waiting)) != NULL && can_open(dc, q)) {
		TAILQ_REMOVE(&dc->waiting, q, entry);
		q->conn = NULL;
		submit(dc, q);
		flush(dc);
	}
	flush(dc);
}

/* HTTP/1.1 would be a downgrade, not an alternative. */
static bool
speaks_h2(struct conn *c)
{
	const unsigned char *proto = NULL;
	unsigned len = 0;

	SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(c->bev), &proto,
	    &len);
	if (len == 2 && memcmp(proto, "h2", 2) == 0)
		return true;
	snprintf(c->why, sizeof(c->why), "the server did not agree to HTTP/2 "
	    "(ALPN h2)");
	return false;
}

static void	start_h2(struct conn *);
static void	doh_idle(struct conn *);

static void
doh_conn_fail(struct conn *c, enum conn_outcome o)
{
	doh_fail((struct doh_conn *)c, o);
}

static bool
doh_busy(const struct conn *c)
{
	const struct doh_conn *dc = (const struct doh_conn *)c;

	return dc->nstreams > 0 || !TAILQ_EMPTY(&dc->waiting);
}

static size_t
doh_inflight(const struct conn *c)
{
	return ((const struct doh_conn *)c)->nstreams;
}

static const struct conn_io doh_io = {
	.alpn = alpn_h2,
	.alpn_len = sizeof(alpn_h2),
	.read = doh_read_cb,
	.usable = speaks_h2,
	.started = start_h2,
	.fail = doh_conn_fail,
	.busy = doh_busy,
	.inflight = doh_inflight,
	.idle = doh_idle,
};

/*
 * No HTTP messaging checks in nghttp2: they cost about a tenth of its
 * time per answer, and what they guard is checked here anyway.  A reply
 * is taken only with one three-digit :status of 200 (after any 1xx; no
 * pseudo-header else, trailers included), ended by END_STREAM, the DNS
 * content type, and a body that answers the question; every other header
 * is ignored, and the framing layer (stream states, flow control, HPACK)
 * is checked by nghttp2 as before.
 */
static nghttp2_option *
h2_option(void)
{
	static nghttp2_option *opt;

	if (opt == NULL) {
		if (nghttp2_option_new(&opt) != 0)
			fatalx("%s: out of memory", __func__);
		nghttp2_option_set_no_http_messaging(opt, 1);
	}
	return opt;
}

/* The handshake is done and the gate passed: start HTTP/2. */
static void
start_h2(struct conn *c)
{
	struct doh_conn *dc = (struct doh_conn *)c;
	const nghttp2_settings_entry settings[] = {
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100 },
		/*
		 * RFC 9218: no priority tree.  DNS streams are all alike, and
		 * nghttp2 then keeps no closed streams for the tree either.
		 */
		{ NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1 },
	};
	if (nghttp2_session_client_new3(&dc->h2, callbacks(), dc, h2_option(),
	    &h2_mem) != 0 ||
	    nghttp2_submit_settings(dc->h2, NGHTTP2_FLAG_NONE, settings,
	    sizeof(settings) / sizeof(settings[0])) != 0) {
		snprintf(dc->c.why, sizeof(dc->c.why), "HTTP/2 setup failed");
		doh_fail(dc, CONN_FAILED);
		return;
	}
	kick(dc);
	settle(dc);
}

static void
doh_read_cb(struct bufferevent *bev, void *arg)
{
	struct doh_conn *dc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len;

	while (dc->c.state == CONN_READY && !dc->broken &&
	    (len = evbuffer_get_contiguous_space(in)) > 0) {
		ssize_t n;

		dc->in_h2 = true;
		n = nghttp2_session_mem_recv(dc->h2,
		    evbuffer_pullup(in, (ssize_t)len), len);
		dc->in_h2 = false;
		if (n < 0) {
			snprintf(dc->c.why, sizeof(dc->c.why), "HTTP/2: %s",
			    nghttp2_strerror((int)n));
			dc->broken = true;
			break;
		}
		evbuffer_drain(in, len);
		/*
		 * Chunk by chunk, WINDOW_UPDATE and RST_STREAM leave before
		 * the next is read: a long input is not judged against a
		 * window that the frames still unsent would have opened.
		 * Streams that closed make room for waiting queries.
		 */
		kick(dc);
	}
	settle(dc);
}

/* The timer while READY: PING an idle connection, close a dead one. */
static void
doh_idle(struct conn *c)
{
	struct doh_conn *dc = (struct doh_conn *)c;
	struct txq_list none = TAILQ_HEAD_INITIALIZER(none);

	if (doh_busy(c))
		return;
	if (dc->ping_out) {
		snprintf(dc->c.why, sizeof(dc->c.why), "no answer to a PING");
		dc->broken = true;
		settle(dc);
		return;
	}
	if (++dc->idle_pings >= IDLE_TICKS_CLOSE) {
		log_debug("upstream %s: closing idle connection",
		    dc->c.up->conf->name);
		nghttp2_session_terminate_session(dc->h2, NGHTTP2_NO_ERROR);
		flush(dc);
		push(dc);	/* the GOAWAY, before the socket closes */
		teardown(dc, &none);
		upstream_conn_event(&dc->c, CONN_CLOSED_IDLE, NULL);
		return;
	}
	/* Liveness: a dead peer is found before a query has to wait on it. */
	nghttp2_submit_ping(dc->h2, NGHTTP2_FLAG_NONE, NULL);
	dc->ping_out = true;
	flush(dc);
	conn_timer(&dc->c, PING_IDLE_MS);
}

static struct conn *
doh_open(struct upstream *up, struct event_base *base)
{
	struct doh_conn *dc = calloc(1, sizeof(*dc));
	const struct upstream_conf *uc = up->conf;

	if (dc == NULL) {
		log_warn("%s", __func__);
		return NULL;
	}
	TAILQ_INIT(&dc->waiting);
	TAILQ_INIT(&dc->streams);
	if ((dc->push_ev = event_new(base, -1, 0, push_cb, dc)) == NULL) {
		log_warn("%s", __func__);
		free(dc);
		return NULL;
	}
	if (uc->port == CONFIG_DOH_PORT)
		snprintf(dc->authority, sizeof(dc->authority), "%s", uc->host);
	else
		snprintf(dc->authority, sizeof(dc->authority), "%s:%u",
		    uc->host, uc->port);
	if (conn_start(&dc->c, &doh_ops, up, base, &doh_io) != 0) {
		event_free(dc->push_ev);
		free(dc);
		return NULL;
	}
	return &dc->c;
}

static void
doh_send(struct conn *c, struct txq *q)
{
	struct doh_conn *dc = (struct doh_conn *)c;

	q->conn = c;
	q->tdata = NULL;
	TAILQ_INSERT_TAIL(&dc->waiting, q, entry);
	if (c->state == CONN_READY) {
		kick(dc);
		settle(dc);
	}
}

static void
doh_cancel(struct conn *c, struct txq *q)
{
	struct doh_conn *dc = (struct doh_conn *)c;
	struct doh_stream *st = q->tdata;

	q->conn = NULL;
	q->tdata = NULL;
	if (st == NULL) {
		TAILQ_REMOVE(&dc->waiting, q, entry);
		return;
	}
	/* The stream lives on until nghttp2 closes it; its answer is lost. */
	st->q = NULL;
	nghttp2_submit_rst_stream(dc->h2, NGHTTP2_FLAG_NONE, st->id,
	    NGHTTP2_CANCEL);
	kick(dc);
}

static void
doh_close(struct conn *c)
{
	struct doh_conn *dc = (struct doh_conn *)c;
	struct txq_list orphans = TAILQ_HEAD_INITIALIZER(orphans);
	struct txq *q;

	if (c->state == CONN_CLOSED)
		return;
	teardown(dc, &orphans);
	while ((q = TAILQ_FIRST(&orphans)) != NULL)
		TAILQ_REMOVE(&orphans, q, entry);
}

const struct transport_ops doh_ops = {
	.name = "doh",
	.open = doh_open,
	.send = doh_send,
	.cancel = doh_cancel,
	.close = doh_close,
};
