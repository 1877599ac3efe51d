#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "stubborn/dnsmsg.h"
#include "stubborn/listener.h"
#include "stubborn/log.h"
#include "stubborn/metrics.h"
#include "stubborn/resolver.h"

#define UDP_BATCH		32	/* datagrams per recvmmsg and sendmmsg */
#define UDP_READS		4	/* recvmmsg calls per wake-up, at most */
/*
 * A burst of queries waits in the kernel while the loop is busy (a TLS
 * handshake, a batch of answers): the default of about 200 KiB holds only
 * some 250 datagrams.  Capped by net.core.rmem_max; memory only in use
 * while datagrams wait.
 */
#define UDP_RCVBUF		(1 << 20)
#define UDP_SLOT		4096	/* bytes: larger datagrams are not DNS */
#define TCP_CLIENTS_MAX		1000
#define TCP_IDLE_SEC		10	/* RFC 7766 6.2.3: seconds, not minutes */
/*
 * A connection's queries are read only while it has fewer than this many
 * unanswered and this many bytes of answers unsent: a client that sends
 * and never reads holds a bounded share of memory, not all of it.
 */
#define TCP_INFLIGHT_MAX	256
#define TCP_UNSENT_MAX		(128 * 1024)
/* Reading resumes below these, not at once: no pause per answer. */
#define TCP_INFLIGHT_RESUME	(TCP_INFLIGHT_MAX * 3 / 4)
#define TCP_UNSENT_RESUME	(TCP_UNSENT_MAX / 2)
#define TCP_BACKLOG		128

struct tcp_client {
	struct listener		*l;
	TAILQ_ENTRY(tcp_client)	 entry;
	struct bufferevent	*bev;	/* NULL once closed */
	struct event		*partial;	/* a query begun: its deadline */
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
	bool			 allowed;
	bool			 paused;	/* not reading: too much due */
	bool			 eof;		/* the client sends no more */
	bool			 reread;	/* queries left in the input */
	bool			 in_read;	/* tcp_read_cb holds a ref */
	int			 refs;	/* the listener's + one per query */
};

struct udp_sock {
	struct listener		*l;
	int			 fd;
	struct event		*ev;
};

struct listener {
	struct event_base	*base;
	const struct config	*cfg;
	struct resolver		*r;
	struct udp_sock		**udp;	/* events point at them: no realloc */
	size_t			 nudp;
	struct evconnlistener	**tcp;
	size_t			 ntcp;
	TAILQ_HEAD(, tcp_client) clients;
	size_t			 nclients;
	bool			 stopped;	/* no query is read any more */
	uint64_t		 full_logged;
};

static bool
allowed(const struct listener *l, const struct sockaddr *sa)
{
	size_t i;

	for (i = 0; i < l->cfg->nallow; i++)
		if (config_cidr_match(&l->cfg->allow[i], sa))
			return true;
	return false;
}

/* One query from any client: answer locally or hand to the resolver. */
static void
handle_query(struct listener *l, const struct client *c, bool ok,
    const uint8_t *msg, size_t len)
{
	struct dnsmsg_info info;
	enum dnsmsg_status status;
	uint8_t buf[DNSMSG_ERROR_MAX];
	size_t n;
	int rcode;

	metrics_inc(c->tc != NULL ? M_QUERIES_TCP : M_QUERIES_UDP);
	status = dnsmsg_parse_query(msg, len, &info);
	if (status == DNSMSG_DROP) {
		metrics_inc(M_MALFORMED);
		return;
	}
	if (status == DNSMSG_FORMERR) {
		metrics_inc(M_MALFORMED);
		rcode = DNS_RCODE_FORMERR;
	} else if (!ok) {
		/* Anything well formed from outside allow: REFUSED, nothing more. */
		metrics_inc(M_REFUSED);
		rcode = DNS_RCODE_REFUSED;
	} else if (status == DNSMSG_NOTIMP) {
		metrics_inc(M_MALFORMED);
		rcode = DNS_RCODE_NOTIMP;
	} else if (status == DNSMSG_BADVERS)
		rcode = DNS_RCODE_BADVERS;
	else if (status == DNSMSG_REFUSED)
		rcode = DNS_RCODE_REFUSED;
	else {
		resolver_query(l->r, c, msg, len, &info);
		return;
	}
	n = dnsmsg_error_reply(msg, len, &info, rcode, buf, sizeof(buf));
	if (n > 0)
		listener_answer(c, buf, n, info.udp_size);
}

/*
 * UDP answers wait here until the callbacks of this loop pass are done,
 * then leave in one sendmmsg per socket: two system calls per batch of
 * queries instead of two per query.
 */
static struct {
	struct mmsghdr		 hdr[UDP_BATCH];
	struct iovec		 iov[UDP_BATCH];
	struct sockaddr_storage	 addr[UDP_BATCH];
	int			 fd[UDP_BATCH];
	uint8_t			 buf[UDP_BATCH][UDP_SLOT];
	unsigned		 n;
	struct event		*flush_ev;	/* active while n > 0 */
} outq;

static void
udp_flush(void)
{
	unsigned i = 0, j;

	while (i < outq.n) {
		int sent;

		/* One call per run of answers on the same socket. */
		for (j = i + 1; j < outq.n && outq.fd[j] == outq.fd[i]; j++)
			;
		while (i < j) {
			sent = sendmmsg(outq.fd[i], &outq.hdr[i], j - i, 0);
			if (sent <= 0) {
				if (sent == -1 && errno == EINTR)
					continue;
				if (sent == -1 && errno != EAGAIN &&
				    errno != EWOULDBLOCK)
					log_debug("sendmmsg: %s", strerror(errno));
				/* Skip the one that failed, like sendto would. */
				sent = 1;
			}
			i += (unsigned)sent;
		}
	}
	outq.n = 0;
}

static void
udp_flush_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	udp_flush();
}

static void
udp_queue(const struct client *c, const uint8_t *msg, size_t len)
{
	unsigned i;

	if (len > UDP_SLOT || outq.flush_ev == NULL) {
		if (sendto(c->udp_fd, msg, len, 0,
		    (const struct sockaddr *)&c->addr, c->addrlen) == -1 &&
		    errno != EAGAIN && errno != EWOULDBLOCK)
			log_debug("sendto: %s", strerror(errno));
		return;
	}
	if (outq.n == UDP_BATCH)
		udp_flush();
	i = outq.n++;
	memcpy(outq.buf[i], msg, len);
	memcpy(&outq.addr[i], &c->addr, c->addrlen);
	outq.fd[i] = c->udp_fd;
	outq.iov[i].iov_base = outq.buf[i];
	outq.iov[i].iov_len = len;
	memset(&outq.hdr[i], 0, sizeof(outq.hdr[i]));
	outq.hdr[i].msg_hdr.msg_name = &outq.addr[i];
	outq.hdr[i].msg_hdr.msg_namelen = c->addrlen;
	outq.hdr[i].msg_hdr.msg_iov = &outq.iov[i];
	outq.hdr[i].msg_hdr.msg_iovlen = 1;
	if (i == 0)
		event_active(outq.flush_ev, EV_WRITE, 0);
}

static void
udp_read_cb(evutil_socket_t fd, short ev, void *arg)
{
	static struct mmsghdr hdr[UDP_BATCH];
	static struct iovec iov[UDP_BATCH];
	static struct sockaddr_storage addr[UDP_BATCH];
	static uint8_t buf[UDP_BATCH][UDP_SLOT];
	struct udp_sock *us = arg;
	struct client c;
	int i, n, reads;

	(void)ev;
	for (reads = 0; reads < UDP_READS; reads++) {
		for (i = 0; i < UDP_BATCH; i++) {
			iov[i].iov_base = buf[i];
			iov[i].iov_len = sizeof(buf[i]);
			memset(&hdr[i], 0, sizeof(hdr[i]));
			hdr[i].msg_hdr.msg_name = &addr[i];
			hdr[i].msg_hdr.msg_namelen = sizeof(addr[i]);
			hdr[i].msg_hdr.msg_iov = &iov[i];
			hdr[i].msg_hdr.msg_iovlen = 1;
		}
		n = recvmmsg(fd, hdr, UDP_BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR)
				log_warn("recvmmsg");
			break;
		}
		for (i = 0; i < n; i++) {
			memset(&c, 0, sizeof(c));
			c.udp_fd = fd;
			c.addrlen = hdr[i].msg_hdr.msg_namelen;
			memcpy(&c.addr, &addr[i], c.addrlen);
			if (hdr[i].msg_hdr.msg_flags & MSG_TRUNC) {
				metrics_inc(M_MALFORMED);	/* not DNS */
				continue;
			}
			handle_query(us->l, &c, allowed(us->l,
			    (struct sockaddr *)&c.addr), buf[i], hdr[i].msg_len);
		}
		if (n < UDP_BATCH)
			break;
	}
	/* The answers from the cache leave now, in one go. */
	udp_flush();
}

static void	tcp_client_close(struct tcp_client *);

/*
 * Read on, pause, or close once a client that has sent its last query
 * has every answer: a half-close (RFC 7766 6.2.1) still gets them all.
 * Reading resumes from the loop, never inside an answer's call chain.
 */
static void
tcp_client_flow(struct tcp_client *tc)
{
	struct evbuffer *out;
	size_t unsent;
	int inflight;
	bool full;

	if (tc->bev == NULL)
		return;
	out = bufferevent_get_output(tc->bev);
	unsent = evbuffer_get_length(out);
	inflight = tc->refs - 1 - tc->in_read;
	full = tc->paused ?
	    inflight >= TCP_INFLIGHT_RESUME || unsent > TCP_UNSENT_RESUME :
	    inflight >= TCP_INFLIGHT_MAX || unsent >= TCP_UNSENT_MAX;
	if (full != tc->paused && !tc->l->stopped) {
		tc->paused = full;
		if (full) {
			bufferevent_disable(tc->bev, EV_READ);
			/* Not the client's slowness: stubborn stopped reading. */
			evtimer_del(tc->partial);
		}
		else {
			if (!tc->eof)
				bufferevent_enable(tc->bev, EV_READ);
			/* Queries read before the pause wait in the input. */
			tc->reread = true;
			bufferevent_trigger(tc->bev, EV_READ,
			    BEV_TRIG_IGNORE_WATERMARKS |
			    BEV_TRIG_DEFER_CALLBACKS);
		}
	}
	if (tc->eof && !tc->paused && !tc->reread && tc->refs == 1 &&
	    unsent == 0)
		tcp_client_close(tc);
}

static void
tcp_client_unref(struct tcp_client *tc)
{
	if (--tc->refs > 0) {
		tcp_client_flow(tc);
		return;
	}
	free(tc);
}

static void
tcp_client_close(struct tcp_client *tc)
{
	struct listener *l = tc->l;

	if (tc->bev == NULL)
		return;
	bufferevent_free(tc->bev);
	tc->bev = NULL;
	event_free(tc->partial);
	tc->partial = NULL;
	TAILQ_REMOVE(&l->clients, tc, entry);
	l->nclients--;
	tcp_client_unref(tc);
}

/*
 * The idle timeout restarts with every byte, so a client could hold a
 * connection for ever by sending one a second.  A query begun must be
 * whole within the idle time, counted from its first byte read (or from
 * the last query whole, when both came in one read), however its bytes
 * come.  While stubborn itself does not read, the time does not run.
 */
static void
tcp_partial_watch(struct tcp_client *tc, bool progress)
{
	struct timeval tv = { TCP_IDLE_SEC, 0 };

	if (tc->paused || tc->eof ||
	    evbuffer_get_length(bufferevent_get_input(tc->bev)) == 0)
		evtimer_del(tc->partial);
	else if (progress || !evtimer_pending(tc->partial, NULL))
		evtimer_add(tc->partial, &tv);
}

static void
tcp_partial_timo(evutil_socket_t fd, short events, void *arg)
{
	struct tcp_client *tc = arg;

	(void)fd;
	(void)events;
	log_debug("TCP client: a query not whole within %d s: closed",
	    TCP_IDLE_SEC);
	tcp_client_close(tc);
}

static void
tcp_read_cb(struct bufferevent *bev, void *arg)
{
	static uint8_t msg[DNSMSG_MAX_LEN];
	struct tcp_client *tc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct client c;
	bool progress = false;

	memset(&c, 0, sizeof(c));
	c.udp_fd = -1;
	c.tc = tc;
	c.addr = tc->addr;
	c.addrlen = tc->addrlen;
	tc->reread = false;
	if (tc->l->stopped)
		return;
	tc->refs++;	/* tc outlives what its queries' answers do */
	tc->in_read = true;
	/* Pipelined queries (RFC 7766 6.2.1.1) are each handled at once. */
	while (tc->bev != NULL && !tc->paused) {
		uint8_t hdr[2];
		size_t len;

		if (evbuffer_copyout(in, hdr, 2) != 2)
			break;
		len = (size_t)(hdr[0] << 8 | hdr[1]);
		if (evbuffer_get_length(in) < 2 + len)
			break;
		evbuffer_drain(in, 2);
		evbuffer_remove(in, msg, len);
		handle_query(tc->l, &c, tc->allowed, msg, len);
		progress = true;
		tcp_client_flow(tc);
	}
	if (tc->bev != NULL)
		tcp_partial_watch(tc, progress);
	tc->in_read = false;
	tcp_client_unref(tc);
}

static void
tcp_write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	tcp_client_flow(arg);
}

static void
tcp_event_cb(struct bufferevent *bev, short events, void *arg)
{
	struct tcp_client *tc = arg;

	(void)bev;
	if (events == (BEV_EVENT_EOF | BEV_EVENT_READING)) {
		/* Half-closed: answer what was asked, then close. */
		tc->eof = true;
		evtimer_del(tc->partial);
		bufferevent_disable(tc->bev, EV_READ);
		tcp_client_flow(tc);
		return;
	}
	tcp_client_close(tc);
}

static void
tcp_accept_cb(struct evconnlistener *el, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct listener *l = arg;
	struct tcp_client *tc;
	struct timeval idle = { TCP_IDLE_SEC, 0 };

	(void)el;
	if (l->nclients >= TCP_CLIENTS_MAX) {
		uint64_t now = (uint64_t)time(NULL);

		/* The oldest connection goes, so a flood cannot lock out. */
		if (now - l->full_logged >= 10) {
			log_warnx("%zu TCP clients: closing the oldest to take "
			    "new ones", l->nclients);
			l->full_logged = now;
		}
		tcp_client_close(TAILQ_FIRST(&l->clients));
	}
	if ((tc = calloc(1, sizeof(*tc))) == NULL) {
		close(fd);
		return;
	}
	tc->l = l;
	tc->refs = 1;
	memcpy(&tc->addr, sa, (size_t)salen);
	tc->addrlen = (socklen_t)salen;
	tc->allowed = allowed(l, sa);
	tc->bev = bufferevent_socket_new(l->base, fd, BEV_OPT_CLOSE_ON_FREE);
	tc->partial = evtimer_new(l->base, tcp_partial_timo, tc);
	if (tc->bev == NULL || tc->partial == NULL) {
		if (tc->bev != NULL)
			bufferevent_free(tc->bev);
		else
			close(fd);
		if (tc->partial != NULL)
			event_free(tc->partial);
		free(tc);
		return;
	}
	bufferevent_setcb(tc->bev, tcp_read_cb, tcp_write_cb, tcp_event_cb,
	    tc);
	/* Answers the client does not take within the idle time: it goes. */
	bufferevent_set_timeouts(tc->bev, &idle, &idle);
	bufferevent_setwatermark(tc->bev, EV_WRITE, TCP_UNSENT_MAX / 2, 0);
	bufferevent_enable(tc->bev, EV_READ);
	TAILQ_INSERT_TAIL(&l->clients, tc, entry);
	l->nclients++;
}

static int
bind_socket(const struct addr *a, int type)
{
	int fd, one = 1, rcvbuf = UDP_RCVBUF;

	fd = socket(a->ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (type == SOCK_DGRAM)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (a->ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) == -1 ||
	    (type == SOCK_STREAM && listen(fd, TCP_BACKLOG) == -1)) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* Bind one listen address for UDP and TCP; 0 or -1 (errno set). */
static int
listen_on(struct listener *l, const struct addr *a)
{
	struct evconnlistener *el;
	struct udp_sock *us;
	void *p;
	int ufd, tfd;

	if ((ufd = bind_socket(a, SOCK_DGRAM)) == -1)
		return -1;
	if ((tfd = bind_socket(a, SOCK_STREAM)) == -1) {
		int saved = errno;

		close(ufd);
		errno = saved;
		return -1;
	}
	if ((p = reallocarray(l->udp, l->nudp + 1, sizeof(*l->udp))) == NULL)
		goto fail;
	l->udp = p;
	if ((p = reallocarray(l->tcp, l->ntcp + 1, sizeof(*l->tcp))) == NULL)
		goto fail;
	l->tcp = p;
	el = evconnlistener_new(l->base, tcp_accept_cb, l,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, tfd);
	if (el == NULL)
		goto fail;
	if ((us = calloc(1, sizeof(*us))) == NULL ||
	    (us->ev = event_new(l->base, ufd, EV_READ | EV_PERSIST,
	    udp_read_cb, us)) == NULL) {
		free(us);
		evconnlistener_free(el);
		close(ufd);
		errno = ENOMEM;
		return -1;
	}
	us->l = l;
	us->fd = ufd;
	l->udp[l->nudp++] = us;
	l->tcp[l->ntcp++] = el;
	return 0;
fail:
	close(ufd);
	close(tfd);
	errno = ENOMEM;
	return -1;
}

struct listener *
listener_new(struct event_base *base, const struct config *cfg,
    struct resolver *r)
{
	struct listener *l = calloc(1, sizeof(*l));
	char buf[INET6_ADDRSTRLEN + 16];
	size_t i;

	if (l == NULL) {
		log_err("%s", __func__);
		return NULL;
	}
	l->base = base;
	l->cfg = cfg;
	l->r = r;
	TAILQ_INIT(&l->clients);
	if ((outq.flush_ev = event_new(base, -1, 0, udp_flush_cb, NULL)) ==
	    NULL) {
		log_errx("%s: event_new failed", __func__);
		free(l);
		return NULL;
	}
	for (i = 0; i < cfg->nlisten; i++) {
		config_addr_str(&cfg->listen[i], buf, sizeof(buf));
		if (listen_on(l, &cfg->listen[i]) == 0) {
			log_info("listening on %s (UDP and TCP)", buf);
			continue;
		}
		/* A host without IPv6 still gets the IPv4 default. */
		if (cfg->listen_default &&
		    cfg->listen[i].ss.ss_family == AF_INET6 &&
		    (errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT)) {
			log_warn("not listening on %s", buf);
			continue;
		}
		log_err("cannot listen on %s", buf);
		listener_free(l);
		return NULL;
	}
	if (l->nudp == 0) {
		log_errx("no address to listen on");
		listener_free(l);
		return NULL;
	}
	/* Start reading only once every socket is bound. */
	for (i = 0; i < l->nudp; i++)
		event_add(l->udp[i]->ev, NULL);
	return l;
}

void
listener_set_config(struct listener *l, const struct config *cfg)
{
	struct tcp_client *tc;

	l->cfg = cfg;
	/* Connected clients are judged again too. */
	TAILQ_FOREACH(tc, &l->clients, entry)
		tc->allowed = allowed(l, (struct sockaddr *)&tc->addr);
}

size_t
listener_count(const struct listener *l)
{
	return l->nudp + l->ntcp;
}

void
listener_stop(struct listener *l)
{
	size_t i;

	struct tcp_client *tc;

	l->stopped = true;
	for (i = 0; i < l->nudp; i++)
		event_del(l->udp[i]->ev);
	for (i = 0; i < l->ntcp; i++)
		evconnlistener_disable(l->tcp[i]);
	/* Connected clients too: the resolver may be gone before they are. */
	TAILQ_FOREACH(tc, &l->clients, entry)
		bufferevent_disable(tc->bev, EV_READ);
}

bool
listener_busy(const struct listener *l)
{
	struct tcp_client *tc;

	TAILQ_FOREACH(tc, &l->clients, entry)
		if (tc->bev != NULL &&
		    evbuffer_get_length(bufferevent_get_output(tc->bev)) > 0)
			return true;
	return false;
}

void
listener_free(struct listener *l)
{
	struct tcp_client *tc;
	size_t i;

	if (l == NULL)
		return;
	/* The last answers (the SERVFAILs of a shutdown) go out first. */
	udp_flush();
	if (outq.flush_ev != NULL)
		event_free(outq.flush_ev);
	outq.flush_ev = NULL;
	while ((tc = TAILQ_FIRST(&l->clients)) != NULL)
		tcp_client_close(tc);
	for (i = 0; i < l->nudp; i++) {
		event_free(l->udp[i]->ev);
		close(l->udp[i]->fd);
		free(l->udp[i]);
	}
	for (i = 0; i < l->ntcp; i++)
		evconnlistener_free(l->tcp[i]);
	free(l->udp);
	free(l->tcp);
	free(l);
}

void
listener_answer(const struct client *c, uint8_t *msg, size_t len,
    uint16_t udp_size)
{
	if (c->tc != NULL) {
		uint8_t hdr[2];

		if (c->tc->bev == NULL)
			return;
		/* Our OPT can take a 65,535-byte answer past what TCP frames. */
		len = dnsmsg_truncate(msg, len, DNSMSG_MAX_LEN);
		hdr[0] = (uint8_t)(len >> 8);
		hdr[1] = (uint8_t)len;
		bufferevent_write(c->tc->bev, hdr, sizeof(hdr));
		bufferevent_write(c->tc->bev, msg, len);
		tcp_client_flow(c->tc);
		return;
	}
	udp_queue(c, msg, dnsmsg_truncate(msg, len, udp_size));
}

void
listener_client_copy(struct client *dst, const struct client *src)
{
	*dst = *src;
	if (dst->tc != NULL)
		dst->tc->refs++;
}

void
listener_client_release(struct client *c)
{
	if (c->tc != NULL)
		tcp_client_unref(c->tc);
	c->tc = NULL;
}
