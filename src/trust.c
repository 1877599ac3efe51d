#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "stubborn/trust.h"

#define PIN_PREFIX	"sha256/"

const char *const trust_verdict_str[] = {
	[TRUST_OK] = "ok",
	[TRUST_FAIL_CHAIN] = "chain",
	[TRUST_FAIL_HOSTNAME] = "hostname",
	[TRUST_FAIL_PIN] = "pin",
	[TRUST_FAIL_CT] = "ct",
	[TRUST_FAIL_DENIED] = "denied",
};

int
trust_pin_parse(const char *s, struct pin *pin)
{
	unsigned char out[48];
	size_t len;
	int n;

	if (strncmp(s, PIN_PREFIX, strlen(PIN_PREFIX)) != 0)
		return -1;
	s += strlen(PIN_PREFIX);
	len = strlen(s);
	/* 32 bytes are 44 base64 characters ending in one '='. */
	if (len != 44 || s[43] != '=' || s[42] == '=')
		return -1;
	n = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
	if (n != 33)	/* DecodeBlock counts the padding as a zero byte */
		return -1;
	memcpy(pin->sha256, out, TRUST_PIN_LEN);
	return 0;
}

void
trust_pin_format(const struct pin *pin, char *buf, size_t bufsz)
{
	/* 32 bytes are 44 base64 characters and a NUL. */
	unsigned char b64[45];

	EVP_EncodeBlock(b64, pin->sha256, TRUST_PIN_LEN);
	snprintf(buf, bufsz, PIN_PREFIX "%.44s", b64);
}

int
trust_pin_of_cert(X509 *cert, struct pin *pin)
{
	unsigned char *der = NULL;
	unsigned int mdlen = 0;
	int len, rc = -1;

	len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
	if (len <= 0)
		return -1;
	if (EVP_Digest(der, (size_t)len, pin->sha256, &mdlen, EVP_sha256(),
	    NULL) == 1 && mdlen == TRUST_PIN_LEN)
		rc = 0;
	OPENSSL_free(der);
	return rc;
}

bool
trust_pin_match(const struct pin *set, size_t n, const struct pin *pin)
{
	int hit = 0;
	size_t i;

	for (i = 0; i < n; i++)
		hit |= CRYPTO_memcmp(set[i].sha256, pin->sha256,
		    TRUST_PIN_LEN) == 0;
	return hit != 0;
}

enum trust_verdict
trust_check_pins(STACK_OF(X509) *chain, const struct pin *set, size_t n)
{
	struct pin p;
	int i;

	if (n == 0)
		return TRUST_OK;
	for (i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
		if (trust_pin_of_cert(sk_X509_value(chain, i), &p) == 0 &&
		    trust_pin_match(set, n, &p))
			return TRUST_OK;
	}
	return TRUST_FAIL_PIN;
}

static json_t *
name_json(const X509_NAME *name)
{
	char *s;
	json_t *j;

	if (name == NULL)
		return json_null();
	s = X509_NAME_oneline(name, NULL, 0);
	j = s ? json_string(s) : json_null();
	OPENSSL_free(s);
	return j;
}

/*
 * A certificate's bytes as evidence: printable ASCII as it is, every other
 * byte (a NUL that would end the string early, bytes that are not UTF-8
 * and would drop it from the JSON) as \xHH, a backslash doubled.  What
 * does not fit ends in a lone backslash and "...", which no name can.
 */
static void
escaped(const unsigned char *p, int len, char *out, size_t outsz)
{
	static const char more[] = "\\...";
	size_t o = 0, need;
	int i;

	for (i = 0; i < len; i++) {
		need = p[i] == '\\' ? 2 : p[i] >= 0x20 && p[i] < 0x7f ? 1 : 4;
		/* Room for this byte, the marker if more follow, the NUL. */
		if (o + need + (i + 1 < len ? sizeof(more) - 1 : 0) + 1 >
		    outsz) {
			memcpy(out + o, more, sizeof(more));
			return;
		}
		if (p[i] == '\\') {
			out[o++] = '\\';
			out[o++] = '\\';
		} else if (p[i] >= 0x20 && p[i] < 0x7f)
			out[o++] = (char)p[i];
		else
			o += (size_t)snprintf(out + o, outsz - o, "\\x%02x",
			    p[i]);
	}
	out[o] = '\0';
}

static json_t *
sans_json(X509 *cert)
{
	GENERAL_NAMES *gens;
	json_t *arr = json_array();
	int i;

	gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		char buf[300];

		if (g->type == GEN_DNS) {
			memcpy(buf, "DNS:", 4);
			escaped(ASN1_STRING_get0_data(g->d.dNSName),
			    ASN1_STRING_length(g->d.dNSName), buf + 4,
			    sizeof(buf) - 4);
		} else if (g->type == GEN_IPADD) {
			const unsigned char *a =
			    ASN1_STRING_get0_data(g->d.iPAddress);
			int l = ASN1_STRING_length(g->d.iPAddress), k, o = 0;

			o = snprintf(buf, sizeof(buf), "IP:");
			for (k = 0; k < l && o < (int)sizeof(buf) - 6; k++)
				o += snprintf(buf + o, sizeof(buf) - (size_t)o,
				    l == 4 ? "%s%u" : "%s%02x",
				    k == 0 ? "" : (l == 4 ? "." :
				    (k % 2 ? "" : ":")), a[k]);
		} else
			continue;
		json_array_append_new(arr, json_string(buf));
	}
	GENERAL_NAMES_free(gens);
	return arr;
}

static void
hex(const unsigned char *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = '\0';
}

/* Every SCT's verdict; empty when the CT step did not run. */
static json_t *
scts_json(const struct trust_incident *inc)
{
	json_t *arr = json_array();
	char id[48], when[40];
	size_t i;

	for (i = 0; inc->ct != NULL && i < inc->ct->nscts; i++) {
		const struct ct_sct *s = &inc->ct->scts[i];
		json_t *o = json_object();

		EVP_EncodeBlock((unsigned char *)id, s->log_id, CT_LOG_ID_LEN);
		json_object_set_new(o, "source",
		    json_string(ct_source_str[s->source]));
		json_object_set_new(o, "log_id", json_string(id));
		json_object_set_new(o, "description", s->log ?
		    json_string(s->log->description) : json_null());
		json_object_set_new(o, "operator", s->log && inc->ct_list ?
		    json_string(inc->ct_list->operators[ct_log_operator_at(
		    s->log, s->timestamp_ms)]) : json_null());
		json_object_set_new(o, "timestamp", json_string(ct_format_time(
		    s->timestamp_ms, when, sizeof(when))));
		json_object_set_new(o, "status",
		    json_string(ct_sct_status_str[s->status]));
		json_array_append_new(arr, o);
	}
	return arr;
}

char *
trust_incident_json(const struct trust_incident *inc)
{
	json_t *o, *chain;
	char pinstr[TRUST_PIN_STR_MAX], when[32];
	char leafhex[2 * EVP_MAX_MD_SIZE + 1];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen;
	struct pin pin;
	struct tm tm;
	time_t now = time(NULL);
	char *s;
	int i;

	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	o = json_object();
	if (o == NULL)
		return NULL;
	json_object_set_new(o, "event", json_string("trust-incident"));
	json_object_set_new(o, "time", json_string(when));
	json_object_set_new(o, "upstream", json_string(inc->upstream));
	json_object_set_new(o, "host", json_string(inc->host));
	json_object_set_new(o, "address", json_string(inc->address));
	json_object_set_new(o, "reason",
	    json_string(trust_verdict_str[inc->verdict]));
	json_object_set_new(o, "detail", json_string(inc->detail));
	if (inc->leaf != NULL) {
		if (trust_pin_of_cert(inc->leaf, &pin) == 0) {
			trust_pin_format(&pin, pinstr, sizeof(pinstr));
			json_object_set_new(o, "spki_pin", json_string(pinstr));
		}
		if (X509_digest(inc->leaf, EVP_sha256(), md, &mdlen) == 1) {
			hex(md, mdlen, leafhex);
			json_object_set_new(o, "leaf_sha256",
			    json_string(leafhex));
		}
		json_object_set_new(o, "subject",
		    name_json(X509_get_subject_name(inc->leaf)));
		json_object_set_new(o, "issuer",
		    name_json(X509_get_issuer_name(inc->leaf)));
		json_object_set_new(o, "sans", sans_json(inc->leaf));
	}
	/* The pins of the whole presented chain let an operator decide. */
	chain = json_array();
	for (i = 0; inc->presented && i < sk_X509_num(inc->presented); i++) {
		if (trust_pin_of_cert(sk_X509_value(inc->presented, i),
		    &pin) != 0)
			continue;
		trust_pin_format(&pin, pinstr, sizeof(pinstr));
		json_array_append_new(chain, json_string(pinstr));
	}
	json_object_set_new(o, "chain_pins", chain);
	json_object_set_new(o, "scts", scts_json(inc));
	json_object_set_new(o, "report_only", json_boolean(inc->report_only));
	/* Reported only: the upstream stays in use, quarantined for 0 s. */
	json_object_set_new(o, "quarantine_seconds",
	    json_integer(inc->report_only ? 0 : inc->quarantine_sec));
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return s;
}
