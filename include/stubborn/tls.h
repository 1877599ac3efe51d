/*
 * TLS for upstream connections: one SSL_CTX per trust tier, SNI, and the
 * glue that runs the trust gate inside the handshake, so that a refused
 * certificate never yields a usable connection.
 */
#ifndef STUBBORN_TLS_H
#define STUBBORN_TLS_H

#include <stdbool.h>

#include <openssl/ssl.h>

#include "stubborn/config.h"
#include "stubborn/trust.h"

/*
 * The gate's state for one handshake.  The caller owns it and must keep
 * it alive as long as the SSL; tls_gate_clear releases what it holds.
 */
struct tls_gate {
	const struct upstream_conf *uc;		/* borrowed: host, pins */
	bool			 checked;	/* the verify hook ran */
	enum trust_verdict	 verdict;
	char			 detail[384];
	X509			*leaf;		/* owned: presented leaf */
	STACK_OF(X509)		*presented;	/* owned: presented chain */
	STACK_OF(X509)		*verified;	/* owned: verified chain */

	/* The CT step: set before the handshake (ct_list NULL: no CT). */
	const struct ct_loglist	*ct_list;	/* borrowed */
	enum ct_policy		 ct_policy;
	bool			 ct_report;	/* log a failure, do not refuse */
	/* ...and its outcome. */
	bool			 ct_checked;
	bool			 report_only;	/* failed, but ct_report */
	struct ct_verdict	 ct;
};

struct bufferevent;
struct event_base;
struct addr;

/* Once at start-up; fatal on failure. */
void	tls_init(void);

/*
 * Load ca_file into store, or the system trust store when NULL: its CA
 * bundle file read once into memory, then its hashed directory.  (OpenSSL
 * 3.0's default paths also search the directory by reading it whole on
 * every lookup, which costs more than the rest of the gate.)  0 or -1.
 */
int	tls_store_load(X509_STORE *store, const char *ca_file);

/*
 * Read the system store again for the contexts made from now on (a
 * reload); on failure the one in use stays.  0 or -1.
 */
int	tls_system_store_reload(void);

/*
 * A client SSL_CTX trusting ca_file alone, or the system store when NULL.
 * Returns NULL (logged) when the store cannot be loaded.
 */
SSL_CTX	*tls_ctx_new(const char *ca_file);

/*
 * A new SSL for uc with SNI and hostname checks set and gate attached
 * (borrowed until SSL_free).  Returns NULL (logged) on failure.
 */
SSL	*tls_ssl_new(SSL_CTX *ctx, const struct upstream_conf *uc,
	    struct tls_gate *gate);

/*
 * Start a TLS connection to a for uc, as a bufferevent in the connecting
 * state (TCP_NODELAY set, SNI and the gate attached, ALPN offered when
 * alpn is set: a wire-format protocol list).  Returns NULL with why
 * (whysz bytes) filled on a local failure.
 */
struct bufferevent *tls_connect(struct event_base *base, SSL_CTX *ctx,
	    const struct upstream_conf *uc, const struct addr *a,
	    struct tls_gate *gate, const unsigned char *alpn,
	    unsigned alpn_len, char *why, size_t whysz);

/*
 * libevent's TLS bufferevent stops reading after a record or two, and
 * the socket stays quiet for records that the connection's BIO (one recv
 * takes many) already holds.  This moves those into bev's input (or,
 * past a bound or on an error, has the read event run again).  Returns
 * true when it added data.
 */
bool	tls_drain(struct bufferevent *bev);

/* Put in why (whysz bytes) what ended bev, given its events. */
void	tls_describe_error(struct bufferevent *bev, short events, char *why,
	    size_t whysz);

/*
 * Called once the handshake has finished: the CT step must have run when
 * it was required (OpenSSL skips it for a chain without an issuer).
 * Returns false, with the gate set to TRUST_FAIL_CT, when it did not.
 */
bool	tls_gate_complete(struct tls_gate *gate);

/*
 * A blocking TLS client for the command line (pin, update-log-list),
 * behind the same gate as the resolver.
 */
struct tls_client {
	struct upstream_conf	 uc;		/* host, port, path of the URL */
	char			 addrstr[64];	/* where it connected */
	int			 fd;
	SSL_CTX			*ctx;
	SSL			*ssl;
	struct tls_gate		 gate;
};

/*
 * Connect to url (tls:// or https://) at address (NULL: the host's first
 * address from the system resolver), trusting ca_file (NULL: the system
 * store), and run the handshake with the gate; with list set the CT step
 * runs in report mode (the caller reads gate.ct).  Returns 0; -1 when the
 * connection or the gate failed; -2 for a bad url, address or CA file.  err
 * (errsz bytes) says why.  Call tls_client_close in every case.
 */
int	tls_client_open(struct tls_client *tc, const char *url,
	    const char *address, const char *ca_file,
	    const struct ct_loglist *list, enum ct_policy policy, char *err,
	    size_t errsz);

/*
 * HTTP/1.1 GET of the URL's path on an open client: the body of a 200
 * answer, at most max bytes, into *body (free() it), and its
 * Last-Modified date as Unix ms into *modified_ms (0 without one, -1
 * for one that is no HTTP date).
 * Returns 0 or -1 with err set.
 */
int	tls_client_get(struct tls_client *tc, size_t max, char **body,
	    size_t *len, int64_t *modified_ms, char *err, size_t errsz);

/* Close and free what tc holds. */
void	tls_client_close(struct tls_client *tc);

/* Release what the gate holds and reset its outcome; its settings stay. */
void	tls_gate_clear(struct tls_gate *gate);

#endif
