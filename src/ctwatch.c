#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include "stubborn/ctwatch.h"
#include "stubborn/denylist.h"
#include "stubborn/log.h"
#include "stubborn/sandbox.h"
#include "stubborn/tls.h"
#include "stubborn/trust.h"

/* name without a trailing dot, for comparing. */
static size_t
name_len(const char *name)
{
	size_t n = strlen(name);

	return n > 0 && name[n - 1] == '.' ? n - 1 : n;
}

static bool
same_name(const char *a, const char *b)
{
	size_t n = name_len(a);

	return n == name_len(b) && strncasecmp(a, b, n) == 0;
}

void
ctwatch_print_watchlist(const struct config *cfg, FILE *out)
{
	size_t i, j;

	for (i = 0; i < cfg->nupstreams; i++) {
		const char *h = cfg->upstreams[i].host;

		for (j = 0; j < i; j++)
			if (same_name(cfg->upstreams[j].host, h))
				break;
		if (j == i)
			fprintf(out, "%.*s\n", (int)name_len(h), h);
	}
}

/*
 * Does watch item w (a name, or ".domain" for the domain and everything
 * under it) cover host?
 */
static bool
watch_covers(const char *w, const char *host)
{
	size_t wl, hl = name_len(host);

	if (*w != '.')
		return same_name(w, host);
	w++;
	wl = name_len(w);
	if (hl == wl)
		return strncasecmp(host, w, wl) == 0;
	return hl > wl && host[hl - wl - 1] == '.' &&
	    strncasecmp(host + hl - wl, w, wl) == 0;
}

static const char *
env(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && *v != '\0' ? v : NULL;
}

static int
pin_of_hex(const char *s, struct pin *p)
{
	size_t i;

	if (s == NULL || strlen(s) != 2 * TRUST_PIN_LEN)
		return -1;
	for (i = 0; i < TRUST_PIN_LEN; i++) {
		unsigned hi, lo;

		if (!isxdigit((unsigned char)s[2 * i]) ||
		    !isxdigit((unsigned char)s[2 * i + 1]))
			return -1;
		hi = isdigit((unsigned char)s[2 * i]) ? s[2 * i] - '0' :
		    (tolower((unsigned char)s[2 * i]) - 'a' + 10);
		lo = isdigit((unsigned char)s[2 * i + 1]) ? s[2 * i + 1] - '0' :
		    (tolower((unsigned char)s[2 * i + 1]) - 'a' + 10);
		p->sha256[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* The PEM chain certspotter saved; NULL (logged) when there is none. */
static STACK_OF(X509) *
read_chain(const char *path)
{
	STACK_OF(X509) *chain;
	const char *why;
	X509 *x;
	FILE *fp;

	if (path == NULL)
		return NULL;
	if ((fp = sandbox_fopen_regular(path, &why)) == NULL) {
		log_warnx("ct-hook: %s: %s", path, why);
		return NULL;
	}
	chain = sk_X509_new_null();
	while (chain != NULL &&
	    (x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL)
		if (!sk_X509_push(chain, x))
			X509_free(x);
	fclose(fp);
	ERR_clear_error();	/* the end of the file reads as an error */
	if (chain != NULL && sk_X509_num(chain) == 0) {
		log_warnx("ct-hook: %s holds no certificate", path);
		sk_X509_free(chain);
		chain = NULL;
	}
	return chain;
}

/*
 * Would the certificate chain to ca_file?  Validity dates and the
 * precertificate poison do not count: the question is who issued it.
 */
static int
chains_to(STACK_OF(X509) *chain, const char *ca_file, char *why,
    size_t whysz)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *untrusted = sk_X509_dup(chain);
	int ok = -1;

	if (store == NULL || ctx == NULL || untrusted == NULL ||
	    tls_store_load(store, ca_file) != 0) {
		snprintf(why, whysz, "cannot load %s", ca_file);
		goto out;
	}
	X509_STORE_set_flags(store, X509_V_FLAG_NO_CHECK_TIME |
	    X509_V_FLAG_IGNORE_CRITICAL);
	(void)sk_X509_shift(untrusted);
	if (X509_STORE_CTX_init(ctx, store, sk_X509_value(chain, 0),
	    untrusted) != 1)
		goto out;
	ok = X509_verify_cert(ctx) == 1;
	if (!ok)
		snprintf(why, whysz, "it does not chain to %s: %s", ca_file,
		    X509_verify_cert_error_string(
		    X509_STORE_CTX_get_error(ctx)));
out:
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	sk_X509_free(untrusted);
	return ok;
}

enum judgement { EXPECTED, UNEXPECTED, UNJUDGED };

static enum judgement
judge(const struct config *cfg, const struct upstream_conf *uc,
    const struct pin *leaf, STACK_OF(X509) *chain, const char **reason,
    char *why, size_t whysz)
{
	const char *ca = uc->ca_file ? uc->ca_file : cfg->ca_file;
	struct pin p;
	int i, r;

	if (uc->npins > 0) {
		*reason = "pin";
		if (trust_pin_match(uc->pins, uc->npins, leaf))
			return EXPECTED;
		for (i = 1; chain != NULL && i < sk_X509_num(chain); i++)
			if (trust_pin_of_cert(sk_X509_value(chain, i), &p) == 0 &&
			    trust_pin_match(uc->pins, uc->npins, &p))
				return EXPECTED;
		snprintf(why, whysz, "no key of the certificate's chain is in "
		    "the pin set of %zu pin%s", uc->npins,
		    uc->npins == 1 ? "" : "s");
		return UNEXPECTED;
	}
	if (ca != NULL) {
		*reason = "ca";
		if (chain == NULL) {
			snprintf(why, whysz, "no certificate file to check "
			    "against %s", ca);
			return UNJUDGED;
		}
		if ((r = chains_to(chain, ca, why, whysz)) < 0)
			return UNJUDGED;
		return r ? EXPECTED : UNEXPECTED;
	}
	*reason = "none";
	snprintf(why, whysz, "it has no pins and trusts the system store");
	return UNJUDGED;
}

static void
set_env_string(json_t *o, const char *key, const char *var)
{
	const char *v = env(var);

	json_object_set_new(o, key, v ? json_string(v) : json_null());
}

static char *
incident_json(const struct upstream_conf *uc, const struct pin *leaf,
    STACK_OF(X509) *chain, const char *reason, const char *why)
{
	char pinstr[TRUST_PIN_STR_MAX], when[32];
	json_t *o = json_object(), *pins = json_array();
	time_t now = time(NULL);
	struct pin p;
	struct tm tm;
	char *s;
	int i;

	if (o == NULL || pins == NULL) {
		json_decref(o);
		json_decref(pins);
		return NULL;
	}
	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	trust_pin_format(leaf, pinstr, sizeof(pinstr));
	json_object_set_new(o, "event", json_string("ct-watch"));
	json_object_set_new(o, "time", json_string(when));
	json_object_set_new(o, "upstream", json_string(uc->name));
	json_object_set_new(o, "host", json_string(uc->host));
	set_env_string(o, "watch_item", "WATCH_ITEM");
	json_object_set_new(o, "reason", json_string(reason));
	json_object_set_new(o, "detail", json_string(why));
	json_object_set_new(o, "spki_pin", json_string(pinstr));
	set_env_string(o, "leaf_sha256", "CERT_SHA256");
	set_env_string(o, "tbs_sha256", "TBS_SHA256");
	set_env_string(o, "subject", "SUBJECT_DN");
	set_env_string(o, "issuer", "ISSUER_DN");
	set_env_string(o, "serial", "SERIAL");
	set_env_string(o, "not_before", "NOT_BEFORE_RFC3339");
	set_env_string(o, "not_after", "NOT_AFTER_RFC3339");
	set_env_string(o, "log_uri", "LOG_URI");
	set_env_string(o, "entry_index", "ENTRY_INDEX");
	for (i = 0; chain != NULL && i < sk_X509_num(chain); i++)
		if (trust_pin_of_cert(sk_X509_value(chain, i), &p) == 0) {
			trust_pin_format(&p, pinstr, sizeof(pinstr));
			json_array_append_new(pins, json_string(pinstr));
		}
	json_object_set_new(o, "chain_pins", pins);
	json_object_set_new(o, "action", json_string("denied"));
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return s;
}

static int
discovered(const struct config *cfg)
{
	const char *item = env("WATCH_ITEM"), *reason = "none";
	char path[4096], why[512], *json;
	STACK_OF(X509) *chain;
	struct pin leaf;
	size_t i, matched = 0;
	int rc = 0, added;

	chain = read_chain(env("CERT_FILENAME"));
	if (pin_of_hex(env("PUBKEY_SHA256"), &leaf) != 0 &&
	    (chain == NULL ||
	    trust_pin_of_cert(sk_X509_value(chain, 0), &leaf) != 0)) {
		log_warnx("ct-hook: discovered_cert without a usable "
		    "PUBKEY_SHA256 or certificate: %s", env("SUMMARY") ?
		    env("SUMMARY") : "no summary");
		sk_X509_pop_free(chain, X509_free);
		return 0;
	}
	if (cfg->state_dir == NULL) {
		log_warnx("ct-hook: no state-dir in %s: nowhere to keep the "
		    "deny list", cfg->path ? cfg->path : "the conf");
		sk_X509_pop_free(chain, X509_free);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/%s", cfg->state_dir, DENYLIST_FILE);
	for (i = 0; item != NULL && i < cfg->nupstreams; i++) {
		const struct upstream_conf *uc = &cfg->upstreams[i];

		if (!watch_covers(item, uc->host))
			continue;
		matched++;
		switch (judge(cfg, uc, &leaf, chain, &reason, why,
		    sizeof(why))) {
		case EXPECTED:
			log_info("ct-hook: upstream %s: %s is expected (%s)",
			    uc->name, env("CERT_SHA256") ?
			    env("CERT_SHA256") : "certificate", reason);
			continue;
		case UNJUDGED:
			log_info("ct-hook: upstream %s: cannot tell whether "
			    "%s is expected: %s", uc->name, env("CERT_SHA256") ?
			    env("CERT_SHA256") : "the certificate", why);
			continue;
		case UNEXPECTED:
			break;
		}
		if ((json = incident_json(uc, &leaf, chain, reason, why)) !=
		    NULL) {
			log_incident(json);
			free(json);
		}
		snprintf(why, sizeof(why), "upstream=%s cert=%s", uc->name,
		    env("CERT_SHA256") ? env("CERT_SHA256") : "-");
		if ((added = denylist_add(path, &leaf, why)) < 0)
			rc = 1;
		else if (added > 0)
			log_warnx("ct-hook: the certificate's key is on the "
			    "deny list %s now", path);
	}
	if (matched == 0)
		log_warnx("ct-hook: watch item %s names no upstream of %s",
		    item ? item : "(none)", cfg->path ? cfg->path : "the "
		    "built-in configuration");
	sk_X509_pop_free(chain, X509_free);
	return rc;
}

int
ctwatch_hook(const struct config *cfg)
{
	const char *event = env("EVENT"), *summary = env("SUMMARY");

	if (event == NULL) {
		log_warnx("ct-hook: no EVENT in the environment; certspotter "
		    "runs this command with -script");
		return 0;
	}
	if (strcmp(event, "discovered_cert") == 0)
		return discovered(cfg);
	if (strcmp(event, "malformed_cert") == 0)
		log_warnx("ct-hook: certspotter found a malformed entry "
		    "(%s entry %s): %s", env("LOG_URI") ? env("LOG_URI") : "?",
		    env("ENTRY_INDEX") ? env("ENTRY_INDEX") : "?",
		    env("PARSE_ERROR") ? env("PARSE_ERROR") :
		    summary ? summary : "no detail");
	else if (strcmp(event, "error") == 0)
		log_warnx("ct-hook: certspotter reports an error: %s",
		    summary ? summary : "no detail");
	else
		log_warnx("ct-hook: unknown certspotter event %s: %s", event,
		    summary ? summary : "no detail");
	return 0;
}
