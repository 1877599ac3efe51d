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

/*
 * Called once the handshake has finished: the CT step must have run when
 * it was required (OpenSSL skips it for a chain without an issuer).
 * Returns false, with the gate set to TRUST_FAIL_CT, when it did not.
 */
bool	tls_gate_complete(struct tls_gate *gate);

/* Release what the gate holds and reset its outcome; its settings stay. */
void	tls_gate_clear(struct tls_gate *gate);

#endif
