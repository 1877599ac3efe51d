#include "config.h"

#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "stubborn/ct.h"
#include "stubborn/log.h"
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
	X509 *leaf;
	int err;

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
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	if (ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			log_crypto(ca_file);
			SSL_CTX_free(ctx);
			return NULL;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		log_crypto("loading the system trust store");
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
