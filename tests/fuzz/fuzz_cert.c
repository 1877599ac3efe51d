/*
 * A certificate a server presents (DER), through the CT step and the
 * incident record: its SCT list extension, the precert TBS cut out of
 * it, the signature checks against the real 2025-08-21 list, the policy.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "stubborn/ct.h"
#include "stubborn/trust.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	static struct ct_loglist *list;
	static X509 *issuer;
	const unsigned char *p = data;
	STACK_OF(SCT) *scts;
	struct ct_verdict v;
	struct trust_incident inc = { "u", "dns.test", "127.0.0.1:853",
	    TRUST_FAIL_CT, "fuzz", NULL, NULL, 60, &v, NULL, false };
	X509 *leaf;
	FILE *fp;

	if (list == NULL) {
		FILE *devnull = fopen("/dev/null", "w");

		list = ct_loglist_load(FUZZ_DATA "/realworld/google-log-list.json",
		    devnull);
		fclose(devnull);
		if ((fp = fopen(FUZZ_DATA "/realworld/google-com-certs-chain.pem",
		    "r")) != NULL) {
			X509_free(PEM_read_X509(fp, NULL, NULL, NULL));
			issuer = PEM_read_X509(fp, NULL, NULL, NULL);
			fclose(fp);
		}
	}
	if ((leaf = d2i_X509(NULL, &p, (long)len)) == NULL) {
		ERR_clear_error();
		return 0;
	}
	scts = ct_embedded_scts(leaf);
	ct_evaluate(list, CT_POLICY_CHROME, leaf, issuer, scts,
	    1755780000000LL, &v);
	ct_evaluate(list, CT_POLICY_APPLE, leaf, NULL, scts,
	    1755780000000LL, &v);
	inc.leaf = leaf;
	inc.ct_list = list;
	free(trust_incident_json(&inc));
	SCT_LIST_free(scts);
	X509_free(leaf);
	ERR_clear_error();
	return 0;
}
