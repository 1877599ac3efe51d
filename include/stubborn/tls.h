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
	char			 detail[256];
	X509			*leaf;		/* owned: presented leaf */
	STACK_OF(X509)		*presented;	/* owned: presented chain */
	STACK_OF(X509)		*verified;	/* owned: verified chain */
};

/* Once at start-up; fatal on failure. */
void	tls_init(void);

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

/* Release what the gate holds and reset it; the uc link stays. */
void	tls_gate_clear(struct tls_gate *gate);

#endif
