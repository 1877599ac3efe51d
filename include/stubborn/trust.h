/*
 * The trust gate's verdict on a verified chain (chain, hostname, SPKI
 * pins) and the trust-incident record.  CT (design.md step 4) plugs in
 * here as TRUST_FAIL_CT.
 */
#ifndef STUBBORN_TRUST_H
#define STUBBORN_TRUST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "stubborn/ct.h"

#define TRUST_PIN_LEN		32	/* SHA-256 */
#define TRUST_PIN_STR_MAX	60	/* "sha256/" + 44 base64 + NUL, rounded */

/* An RFC 7469 pin-sha256: SHA-256 of the DER SubjectPublicKeyInfo. */
struct pin {
	uint8_t	sha256[TRUST_PIN_LEN];
};

enum trust_verdict {
	TRUST_OK,
	TRUST_FAIL_CHAIN,
	TRUST_FAIL_HOSTNAME,
	TRUST_FAIL_PIN,
	TRUST_FAIL_CT,
	TRUST_FAIL_DENIED,	/* a key of the chain is on the deny list */
};
#define TRUST_VERDICTS	(TRUST_FAIL_DENIED + 1)
extern const char *const trust_verdict_str[];

/* Parse "sha256/<base64 of 32 bytes>" into *pin.  Returns 0 or -1. */
int	trust_pin_parse(const char *s, struct pin *pin);

/* Write "sha256/<base64>" into buf (at least TRUST_PIN_STR_MAX bytes). */
void	trust_pin_format(const struct pin *pin, char *buf, size_t bufsz);

/* The pin of cert's public key.  Returns 0 or -1. */
int	trust_pin_of_cert(X509 *cert, struct pin *pin);

/*
 * True when pin is one of the n pins of set.  Every entry is compared in
 * full, whatever matches, so timing tells nothing about the set.
 */
bool	trust_pin_match(const struct pin *set, size_t n, const struct pin *pin);

/*
 * Step 3 of the gate: TRUST_OK when any certificate of the verified chain
 * (borrowed) has a key in the n pins of set, or when n is 0; otherwise
 * TRUST_FAIL_PIN.
 */
enum trust_verdict trust_check_pins(STACK_OF(X509) *chain,
	    const struct pin *set, size_t n);

/* What a trust incident records; every pointer is borrowed. */
struct trust_incident {
	const char		*upstream;	/* conf section name */
	const char		*host;		/* the name that was verified */
	const char		*address;	/* "ip:port" connected to */
	enum trust_verdict	 verdict;
	const char		*detail;	/* why, in words */
	X509			*leaf;		/* presented leaf, may be NULL */
	STACK_OF(X509)		*presented;	/* chain as the peer sent it */
	long			 quarantine_sec;
	const struct ct_verdict	*ct;		/* NULL: CT did not run */
	const struct ct_loglist	*ct_list;	/* names ct's logs */
	bool			 report_only;	/* ct = report: not refused */
};

/*
 * The incident as one line of JSON (no newline).  Returns a string the
 * caller frees with free(), or NULL on allocation failure.
 */
char	*trust_incident_json(const struct trust_incident *inc);

#endif
