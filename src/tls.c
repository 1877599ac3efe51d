#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <event2/bufferevent.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "stubborn/ct.h"
#include "stubborn/log.h"
#include "stubborn/denylist.h"
#include "stubborn/sandbox.h"
#include "stubborn/tls.h"

static int gate_idx = -1;

void
tls_init(void)
{
	gate_idx = SSL_get_ex_new_index(0, "stubborn gate", NULL, NULL, NULL);
	if (gate_idx < 0)
		fatalx("%s: SSL_get_ex_new_index failed", __func__);
}

static STACK_OF(X509) *
chain_dup(STACK_OF(X509) *sk)
{
	return sk ? X509_chain_up_ref(sk) : NULL;
}

/*
 * Runs inside the handshake in place of OpenSSL's own chain check, so the
 * pin step sees the chain *as verified* (not merely as presented) and a
 * refusal aborts the handshake before any application data.
 */
static int
tls_verify_cb(X509_STORE_CTX *xctx, void *arg)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xctx,
	    SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_gate *gate = ssl ? SSL_get_ex_data(ssl, gate_idx) : NULL;
	struct pin hit;
	X509 *leaf;
	int err, depth;

	(void)arg;
	if (gate == NULL)
		return 0;	/* never connect without a gate */
	tls_gate_clear(gate);
	gate->checked = true;
	leaf = X509_STORE_CTX_get0_cert(xctx);
	if (leaf != NULL && X509_up_ref(leaf))
		gate->leaf = leaf;
	gate->presented = chain_dup(X509_STORE_CTX_get0_untrusted(xctx));

	if (X509_verify_cert(xctx) != 1) {
		err = X509_STORE_CTX_get_error(xctx);
		gate->verdict = err == X509_V_ERR_HOSTNAME_MISMATCH ?
		    TRUST_FAIL_HOSTNAME : TRUST_FAIL_CHAIN;
		snprintf(gate->detail, sizeof(gate->detail),
		    "certificate verify failed at depth %d: %s",
		    X509_STORE_CTX_get_error_depth(xctx),
		    X509_verify_cert_error_string(err));
		return 0;
	}
	gate->verified = chain_dup(X509_STORE_CTX_get0_chain(xctx));
	if ((depth = denylist_check(gate->verified, &hit)) >= 0) {
		char pin[TRUST_PIN_STR_MAX];

		trust_pin_format(&hit, pin, sizeof(pin));
		gate->verdict = TRUST_FAIL_DENIED;
		snprintf(gate->detail, sizeof(gate->detail),
		    "the key of the certificate at depth %d (%s) is on the "
		    "deny list", depth, pin);
		X509_STORE_CTX_set_error(xctx, X509_V_ERR_APPLICATION_VERIFICATION);
		return 0;
	}
	gate->verdict = trust_check_pins(gate->verified, gate->uc->pins,
	    gate->uc->npins);
	if (gate->verdict != TRUST_OK) {
		snprintf(gate->detail, sizeof(gate->detail),
		    "no key of the verified chain is in the pin set of %zu "
		    "pin%s", gate->uc->npins, gate->uc->npins == 1 ? "" : "s");
		X509_STORE_CTX_set_error(xctx, X509_V_ERR_APPLICATION_VERIFICATION);
		return 0;
	}
	return 1;
}

/*
 * OpenSSL calls this inside the handshake once the chain has verified,
 * with the SCTs of all three sources.  OpenSSL's own SCT checks ran
 * against an empty store; ct.c checks them with the keys of our list.
 */
static int
tls_ct_cb(const CT_POLICY_EVAL_CTX *pctx, const STACK_OF(SCT) *scts,
    void *arg)
{
	struct tls_gate *gate = arg;

	gate->ct_checked = true;
	ct_evaluate(gate->ct_list, gate->ct_policy,
	    CT_POLICY_EVAL_CTX_get0_cert(pctx),
	    CT_POLICY_EVAL_CTX_get0_issuer(pctx), scts,
	    (int64_t)CT_POLICY_EVAL_CTX_get_time(pctx), &gate->ct);
	/* Failed SCT checks leave errors that would confuse SSL_get_error. */
	ERR_clear_error();
	if (gate->ct.compliant)
		return 1;
	gate->verdict = TRUST_FAIL_CT;
	snprintf(gate->detail, sizeof(gate->detail), "%s", gate->ct.why);
	if (gate->ct_report) {
		gate->report_only = true;
		return 1;
	}
	return 0;
}

bool
tls_gate_complete(struct tls_gate *gate)
{
	if (gate->ct_list == NULL || gate->ct_checked)
		return true;
	gate->verdict = TRUST_FAIL_CT;
	snprintf(gate->detail, sizeof(gate->detail), "CT could not be "
	    "checked: the verified chain has no issuer certificate");
	if (gate->ct_report) {
		gate->report_only = true;
		return true;
	}
	return false;
}

int
tls_store_load(X509_STORE *store, const char *ca_file)
{
	const char *file, *dir;
	bool any = false;

	if (ca_file != NULL) {
		const char *path = sandbox_path(ca_file), *why;
		FILE *fp = sandbox_fopen_regular(path, &why);

		/* OpenSSL would wait on a FIFO for ever. */
		if (fp == NULL && (errno == EINVAL || errno == EISDIR)) {
			ERR_raise_data(ERR_LIB_SYS, errno, "%s", why);
			return -1;
		}
		if (fp != NULL)
			fclose(fp);
		return X509_STORE_load_file(store, path) == 1 ? 0 : -1;
	}
	/* The same places and environment overrides as the defaults. */
	if ((file = getenv(X509_get_default_cert_file_env())) == NULL)
		file = X509_get_default_cert_file();
	if ((dir = getenv(X509_get_default_cert_dir_env())) == NULL)
		dir = X509_get_default_cert_dir();
	if (access(file, R_OK) == 0 && X509_STORE_load_file(store, file) == 1)
		any = true;
	if (X509_STORE_load_path(store, dir) == 1)
		any = true;
	ERR_clear_error();	/* one of the two may well be missing */
	return any ? 0 : -1;
}

/* A private BIO_ctrl: the socket's last hard error, for the log. */
#define SOCKBUF_CTRL_ERRNO	0x5354

/*
 * The connections' socket BIO, with a receive buffer of its own.  One
 * recv takes whatever the socket holds, many records at once; OpenSSL
 * then reads each record's header and body from memory.  (OpenSSL's
 * read-ahead would do the first, but moves all it holds to the front of
 * its buffer for every record: with small records, most of the work.)
 * tls_drain hands on what the buffer holds, which no socket event will.
 */
struct sockbuf {
	int		fd;
	int		err;	/* recv's or send's, once SO_ERROR is spent */
	bool		eof;	/* as the socket BIO: OpenSSL asks */
	size_t		off;
	size_t		len;
	uint8_t		buf[16384];
};

static int
sockbuf_create(BIO *b)
{
	struct sockbuf *sb = malloc(sizeof(*sb));

	if (sb == NULL)
		return 0;
	sb->fd = -1;
	sb->err = 0;
	sb->eof = false;
	sb->off = sb->len = 0;
	BIO_set_data(b, sb);
	BIO_set_init(b, 1);
	return 1;
}

static int
sockbuf_destroy(BIO *b)
{
	free(BIO_get_data(b));	/* the fd is the bufferevent's to close */
	BIO_set_data(b, NULL);
	return 1;
}

static int
sockbuf_read(BIO *b, char *out, int outl)
{
	struct sockbuf *sb = BIO_get_data(b);
	size_t n;

	BIO_clear_retry_flags(b);
	if (outl <= 0)
		return 0;
	if (sb->off == sb->len) {
		ssize_t r = recv(sb->fd, sb->buf, sizeof(sb->buf), 0);

		if (r <= 0) {
			if (r == 0)
				sb->eof = true;
			else if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR)
				BIO_set_retry_read(b);
			else
				sb->err = errno;
			return (int)r;
		}
		sb->off = 0;
		sb->len = (size_t)r;
	}
	n = sb->len - sb->off;
	if (n > (size_t)outl)
		n = (size_t)outl;
	memcpy(out, sb->buf + sb->off, n);
	sb->off += n;
	return (int)n;
}

static int
sockbuf_write(BIO *b, const char *in, int inl)
{
	struct sockbuf *sb = BIO_get_data(b);
	ssize_t r;

	BIO_clear_retry_flags(b);
	if ((r = send(sb->fd, in, (size_t)inl, MSG_NOSIGNAL)) < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			BIO_set_retry_write(b);
		else
			sb->err = errno;
	}
	return (int)r;
}

static long
sockbuf_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct sockbuf *sb = BIO_get_data(b);

	(void)num;
	switch (cmd) {
	case BIO_C_GET_FD:
		if (ptr != NULL)
			*(int *)ptr = sb->fd;
		return sb->fd;
	case BIO_CTRL_PENDING:
		return (long)(sb->len - sb->off);
	case BIO_CTRL_EOF:
		return sb->eof;
	case SOCKBUF_CTRL_ERRNO:
		return sb->err;
	case BIO_CTRL_FLUSH:
	case BIO_CTRL_GET_CLOSE:
	case BIO_CTRL_SET_CLOSE:
		return 1;	/* never closes the fd: see sockbuf_destroy */
	default:
		return 0;
	}
}

static BIO *
sockbuf_new(int fd)
{
	static BIO_METHOD *meth;
	BIO *b;

	if (meth == NULL) {
		if ((meth = BIO_meth_new(BIO_get_new_index() |
		    BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
		    "stubborn socket")) == NULL ||
		    !BIO_meth_set_create(meth, sockbuf_create) ||
		    !BIO_meth_set_destroy(meth, sockbuf_destroy) ||
		    !BIO_meth_set_read(meth, sockbuf_read) ||
		    !BIO_meth_set_write(meth, sockbuf_write) ||
		    !BIO_meth_set_ctrl(meth, sockbuf_ctrl)) {
			BIO_meth_free(meth);
			meth = NULL;
			return NULL;
		}
	}
	if ((b = BIO_new(meth)) == NULL)
		return NULL;
	((struct sockbuf *)BIO_get_data(b))->fd = fd;
	return b;
}

struct bufferevent *
tls_connect(struct event_base *base, SSL_CTX *ctx,
    const struct upstream_conf *uc, const struct addr *a,
    struct tls_gate *gate, const unsigned char *alpn, unsigned alpn_len,
    char *why, size_t whysz)
{
	struct bufferevent *bev;
	int one = 1, fd;
	SSL *ssl;
	BIO *bio = NULL;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(why, whysz, "socket: %s", strerror(errno));
		return NULL;
	}
	/* A query is one small write; Nagle would hold it for an ACK. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if ((ssl = tls_ssl_new(ctx, uc, gate)) == NULL ||
	    (alpn != NULL && SSL_set_alpn_protos(ssl, alpn, alpn_len) != 0)) {
		SSL_free(ssl);
		close(fd);
		snprintf(why, whysz, "TLS setup failed");
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(base, fd, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		close(fd);
		snprintf(why, whysz, "out of memory");
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	if (bufferevent_socket_connect(bev, (const struct sockaddr *)&a->ss,
	    (int)a->len) != 0) {
		snprintf(why, whysz, "connect: %s", strerror(errno));
		bufferevent_free(bev);
		return NULL;
	}
	/*
	 * Connecting gave the SSL a plain socket BIO (not owning the fd);
	 * ours replaces it before the handshake's first byte.
	 */
	if ((bio = sockbuf_new(fd)) == NULL) {
		snprintf(why, whysz, "out of memory");
		bufferevent_free(bev);
		return NULL;
	}
	SSL_set_bio(ssl, bio, bio);
	return bev;
}

/* Far more than one pass needs; the rest waits for the next loop turn. */
#define DRAIN_MAX	(256 * 1024)

bool
tls_drain(struct bufferevent *bev)
{
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	struct evbuffer *in = bufferevent_get_input(bev);
	/*
	 * Records are gathered here and added at once: reserving a record's
	 * worth in the evbuffer for each would allocate a chain per record.
	 */
	uint8_t buf[16384];
	size_t used = 0, moved = 0;
	bool again = false;
	int n;

	ERR_clear_error();	/* once: it costs as much as a small record */
	while (SSL_has_pending(ssl) || BIO_pending(SSL_get_rbio(ssl)) > 0) {
		if (moved + used >= DRAIN_MAX) {
			again = true;
			break;
		}
		if (sizeof(buf) - used < 2048) {
			if (evbuffer_add(in, buf, used) != 0)
				goto lost;
			moved += used;
			used = 0;
		}
		if ((n = SSL_read(ssl, buf + used, (int)(sizeof(buf) -
		    used))) <= 0) {
			/* EOF, an alert or a write wanted: libevent's to see. */
			again = SSL_get_error(ssl, n) != SSL_ERROR_WANT_READ;
			break;
		}
		used += (size_t)n;
	}
	if (used > 0 && evbuffer_add(in, buf, used) != 0)
		goto lost;
	if (again)
		event_base_active_by_fd(bufferevent_get_base(bev),
		    bufferevent_getfd(bev), EV_READ);
	return moved + used > 0;
lost:
	/* Out of memory: the stream has a hole, so the connection must end. */
	log_warnx("TLS read: out of memory");
	shutdown(bufferevent_getfd(bev), SHUT_RDWR);
	event_base_active_by_fd(bufferevent_get_base(bev),
	    bufferevent_getfd(bev), EV_READ);
	return moved > 0;
}

void
tls_describe_error(struct bufferevent *bev, short events, char *why,
    size_t whysz)
{
	unsigned long e = bufferevent_get_openssl_error(bev);
	evutil_socket_t fd = bufferevent_getfd(bev);
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	socklen_t len = sizeof(int);
	int serr = 0;

	/*
	 * The socket's own error (a refused connect) says the most; the
	 * first recv or send after it reports it, and clears it.
	 */
	if (fd != -1)
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &serr, &len);
	if (serr == 0 && ssl != NULL && SSL_get_rbio(ssl) != NULL)
		serr = (int)BIO_ctrl(SSL_get_rbio(ssl), SOCKBUF_CTRL_ERRNO, 0,
		    NULL);
	/* errno says something only about an error, not a clean EOF. */
	if (serr == 0 && (events & BEV_EVENT_ERROR))
		serr = EVUTIL_SOCKET_ERROR();
	if (events & BEV_EVENT_TIMEOUT)
		snprintf(why, whysz, "timed out");
	else if (e != 0 && ERR_GET_LIB(e) != 0 &&
	    ERR_GET_LIB(e) != ERR_LIB_SYS) {
		char buf[120];

		ERR_error_string_n(e, buf, sizeof(buf));
		snprintf(why, whysz, "TLS: %s", buf);
	} else if (serr != 0)
		snprintf(why, whysz, "%s", strerror(serr));
	else if (events & BEV_EVENT_EOF)
		snprintf(why, whysz, "connection closed by peer");
	else
		snprintf(why, whysz, "connection failed");
}

/*
 * The system store, loaded once and shared by every context that uses
 * it: one copy in memory, and a reload in a chroot without the bundle
 * keeps the one read at start.
 */
static X509_STORE *system_store;

int
tls_system_store_reload(void)
{
	X509_STORE *s = X509_STORE_new();

	/*
	 * A missing certificate directory still "loads" (it is read at
	 * verification time): in a chroot without the bundle that would be
	 * an empty store, so only a store holding certificates replaces one.
	 */
	if (s == NULL || tls_store_load(s, NULL) != 0 ||
	    sk_X509_OBJECT_num(X509_STORE_get0_objects(s)) == 0) {
		X509_STORE_free(s);
		ERR_clear_error();
		return -1;
	}
	X509_STORE_free(system_store);
	system_store = s;
	return 0;
}

SSL_CTX *
tls_ctx_new(const char *ca_file)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		log_crypto("SSL_CTX_new");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_cert_verify_callback(ctx, tls_verify_cb, NULL);
	/* No resumption yet: every connection runs the whole gate. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/*
	 * Not SSL_MODE_RELEASE_BUFFERS: a busy connection would free and
	 * allocate its buffers for every record.  No read-ahead: the
	 * connections' BIO buffers (sockbuf_new), and the blocking client
	 * needs none.
	 */
	if (ca_file == NULL) {
		if (system_store == NULL && tls_system_store_reload() != 0) {
			log_warnx("cannot load the system trust store");
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set1_cert_store(ctx, system_store);
	} else if (tls_store_load(SSL_CTX_get_cert_store(ctx), ca_file) != 0) {
		log_crypto(ca_file);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

SSL *
tls_ssl_new(SSL_CTX *ctx, const struct upstream_conf *uc,
    struct tls_gate *gate)
{
	SSL *ssl = SSL_new(ctx);

	if (ssl == NULL) {
		log_crypto("SSL_new");
		return NULL;
	}
	gate->uc = uc;
	/*
	 * SAN dNSName only: the subject CN is never consulted, and an IP SAN
	 * cannot match because the name checked is always a hostname.
	 */
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	    X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	if (SSL_set_tlsext_host_name(ssl, uc->host) != 1 ||
	    SSL_set1_host(ssl, uc->host) != 1 ||
	    SSL_set_ex_data(ssl, gate_idx, gate) != 1 ||
	    (gate->ct_list != NULL && SSL_set_ct_validation_callback(ssl,
	    tls_ct_cb, gate) != 1)) {
		log_crypto("setting up TLS");
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

void
tls_gate_clear(struct tls_gate *gate)
{
	X509_free(gate->leaf);
	sk_X509_pop_free(gate->presented, X509_free);
	sk_X509_pop_free(gate->verified, X509_free);
	gate->leaf = NULL;
	gate->presented = NULL;
	gate->verified = NULL;
	gate->checked = false;
	gate->verdict = TRUST_OK;
	gate->detail[0] = '\0';
	gate->ct_checked = false;
	gate->report_only = false;
	gate->ct.nscts = 0;
	gate->ct.compliant = false;
}

#define CLIENT_TIMEOUT_SEC	10

static int
connect_blocking(const struct addr *a)
{
	struct timeval tv = { CLIENT_TIMEOUT_SEC, 0 };
	struct pollfd pfd;
	socklen_t elen = sizeof(int);
	int fd, err = 0;

	if ((fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) == -1)
		return -1;
	if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == -1) {
		if (errno != EINPROGRESS)
			goto fail;
		pfd.fd = fd;
		pfd.events = POLLOUT;
		if (poll(&pfd, 1, CLIENT_TIMEOUT_SEC * 1000) != 1) {
			errno = ETIMEDOUT;
			goto fail;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == -1 ||
		    err != 0) {
			errno = err;
			goto fail;
		}
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == -1)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

static int
resolve_first(const char *host, uint16_t port, struct addr *a, char *err,
    size_t errsz)
{
	struct addrinfo hints, *res;
	int e;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if ((e = getaddrinfo(host, NULL, &hints, &res)) != 0) {
		snprintf(err, errsz, "%s: %s", host, gai_strerror(e));
		return -1;
	}
	memset(a, 0, sizeof(*a));
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	if (a->ss.ss_family == AF_INET)
		((struct sockaddr_in *)&a->ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(port);
	freeaddrinfo(res);
	return 0;
}

/*
 * Why a blocking handshake failed with nothing on OpenSSL's error queue,
 * from SSL_get_error's verdict and errno: the socket's receive timeout
 * ends a silent server.
 */
static const char *
handshake_failure_str(int serr, int sys)
{
	if (serr == SSL_ERROR_WANT_READ || serr == SSL_ERROR_WANT_WRITE ||
	    (serr == SSL_ERROR_SYSCALL && (sys == EAGAIN ||
	    sys == EWOULDBLOCK)))
		return "no answer in time";
	if (serr == SSL_ERROR_SYSCALL && sys != 0)
		return strerror(sys);
	return "connection closed";
}

int
tls_client_open(struct tls_client *tc, const char *url, const char *address,
    const char *ca_file, const struct ct_loglist *list, enum ct_policy policy,
    char *err, size_t errsz)
{
	const char *why;
	struct addr a;
	int r;

	memset(tc, 0, sizeof(*tc));
	tc->fd = -1;
	tc->uc.name = (char *)"cli";
	if ((why = config_parse_url(url, &tc->uc)) != NULL) {
		snprintf(err, errsz, "%s: %s", url, config_url_is_ip(why) ?
		    "URL needs a hostname, not an IP address" : why);
		return -2;
	}
	/* Before any lookup: a bad CA file is bad input, as in the conf. */
	if ((tc->ctx = tls_ctx_new(ca_file)) == NULL) {
		snprintf(err, errsz, ca_file ? "cannot load the CA file '%s'" :
		    "cannot load the system trust store", ca_file);
		return ca_file ? -2 : -1;
	}
	if (address != NULL) {
		if (config_parse_addr(address, tc->uc.port, &a) != 0) {
			snprintf(err, errsz, "bad address '%s'", address);
			return -2;
		}
	} else if (resolve_first(tc->uc.host, tc->uc.port, &a, err,
	    errsz) != 0)
		return -1;
	config_addr_str(&a, tc->addrstr, sizeof(tc->addrstr));
	tc->gate.ct_list = list;
	tc->gate.ct_policy = policy;
	tc->gate.ct_report = true;
	if ((tc->ssl = tls_ssl_new(tc->ctx, &tc->uc, &tc->gate)) == NULL) {
		snprintf(err, errsz, "cannot set up TLS");
		return -1;
	}
	if ((tc->fd = connect_blocking(&a)) == -1) {
		snprintf(err, errsz, "%s: %s", tc->addrstr, strerror(errno));
		return -1;
	}
	SSL_set_fd(tc->ssl, tc->fd);
	errno = 0;
	if ((r = SSL_connect(tc->ssl)) != 1) {
		int serr = SSL_get_error(tc->ssl, r), sys = errno;

		if (tc->gate.checked && tc->gate.verdict != TRUST_OK)
			snprintf(err, errsz, "%s at %s: rejected (%s): %s",
			    tc->uc.host, tc->addrstr,
			    trust_verdict_str[tc->gate.verdict],
			    tc->gate.detail);
		else {
			unsigned long e = ERR_peek_last_error();

			snprintf(err, errsz, "%s at %s: TLS handshake failed: "
			    "%s", tc->uc.host, tc->addrstr, e ?
			    ERR_reason_error_string(e) :
			    handshake_failure_str(serr, sys));
		}
		ERR_clear_error();
		return -1;
	}
	tls_gate_complete(&tc->gate);
	ERR_clear_error();
	return 0;
}

/* Undo chunked transfer coding in place; the new length or -1. */
static long
unchunk(char *b, size_t len)
{
	size_t in = 0, out = 0;

	for (;;) {
		char *ep;
		unsigned long n;

		if (in >= len)
			return -1;
		n = strtoul(b + in, &ep, 16);
		if (ep == b + in || (ep = strstr(ep, "\r\n")) == NULL)
			return -1;
		in = (size_t)(ep - b) + 2;
		if (n == 0)
			return (long)out;
		if (n > len - in || len - in - n < 2)
			return -1;
		memmove(b + out, b + in, n);
		out += n;
		in += n + 2;
	}
}

int
tls_client_get(struct tls_client *tc, size_t max, char **body, size_t *len,
    int64_t *modified_ms, char *err, size_t errsz)
{
	char req[1024], *buf = NULL, *hdr_end, *p;
	size_t used = 0, cap = 0;
	long blen;
	int n, status;

	*body = NULL;
	*modified_ms = 0;
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n"
	    "User-Agent: stubborn/%s\r\nAccept: application/json\r\n"
	    "Connection: close\r\n\r\n", tc->uc.path && !tc->uc.path_default ?
	    tc->uc.path : "/",
	    tc->uc.host, PACKAGE_VERSION);
	if (SSL_write(tc->ssl, req, (int)strlen(req)) <= 0) {
		snprintf(err, errsz, "cannot send the request");
		return -1;
	}
	for (;;) {
		if (used + 16384 + 1 > cap) {
			char *nb;

			if (cap > max + 65536) {
				snprintf(err, errsz, "answer larger than %zu "
				    "bytes", max);
				goto fail;
			}
			cap = cap ? cap * 2 : 65536;
			if ((nb = realloc(buf, cap)) == NULL) {
				snprintf(err, errsz, "out of memory");
				goto fail;
			}
			buf = nb;
		}
		n = SSL_read(tc->ssl, buf + used, 16384);
		if (n <= 0)
			break;
		used += (size_t)n;
	}
	ERR_clear_error();
	if (buf == NULL)
		goto short_answer;
	buf[used] = '\0';
	if ((hdr_end = strstr(buf, "\r\n\r\n")) == NULL)
		goto short_answer;
	if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
		snprintf(err, errsz, "not an HTTP answer");
		goto fail;
	}
	if (status != 200) {
		snprintf(err, errsz, "HTTP status %d", status);
		goto fail;
	}
	*hdr_end = '\0';
	p = hdr_end + 4;
	blen = (long)(used - (size_t)(p - buf));
	for (char *h = strstr(buf, "\r\n"); h != NULL; h = strstr(h + 2,
	    "\r\n")) {
		if (strncasecmp(h + 2, "transfer-encoding:", 18) == 0 &&
		    strcasestr(h + 20, "chunked") != NULL &&
		    (blen = unchunk(p, (size_t)blen)) < 0)
			goto short_answer;
		if (strncasecmp(h + 2, "content-length:", 15) == 0 &&
		    strtol(h + 17, NULL, 10) != blen)
			goto short_answer;	/* cut off: never install it */
		if (strncasecmp(h + 2, "last-modified:", 14) == 0) {
			char *eol = strstr(h + 16, "\r\n"), save = '\0';
			const char *v = h + 16;

			if (eol != NULL) {
				save = *eol;
				*eol = '\0';
			}
			while (*v == ' ' || *v == '\t')
				v++;
			if (ct_parse_http_date(v, modified_ms) != 0)
				*modified_ms = -1;	/* there, not usable */
			if (eol != NULL)
				*eol = save;
		}
	}
	if ((size_t)blen > max) {
		snprintf(err, errsz, "answer larger than %zu bytes", max);
		goto fail;
	}
	memmove(buf, p, (size_t)blen);
	buf[blen] = '\0';
	*body = buf;
	*len = (size_t)blen;
	return 0;
short_answer:
	snprintf(err, errsz, "incomplete HTTP answer");
fail:
	free(buf);
	return -1;
}

void
tls_client_close(struct tls_client *tc)
{
	if (tc->ssl != NULL) {
		SSL_shutdown(tc->ssl);
		SSL_free(tc->ssl);
	}
	if (tc->fd != -1)
		close(tc->fd);
	SSL_CTX_free(tc->ctx);
	tls_gate_clear(&tc->gate);
	free(tc->uc.host);
	free(tc->uc.path);
	memset(tc, 0, sizeof(*tc));
	tc->fd = -1;
}
