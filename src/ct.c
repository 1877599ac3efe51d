#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "stubborn/ct.h"
#include "stubborn/sandbox.h"

#define DAY_SEC			86400LL
#define CHROME_SHORT_DAYS	180
#define APPLE_MAX_DAYS		398

const char *const ct_log_state_str[] = {
	[CT_LOG_PENDING] = "pending",
	[CT_LOG_QUALIFIED] = "qualified",
	[CT_LOG_USABLE] = "usable",
	[CT_LOG_READONLY] = "readonly",
	[CT_LOG_RETIRED] = "retired",
	[CT_LOG_REJECTED] = "rejected",
};

const char *const ct_source_str[] = {
	[CT_SRC_EMBEDDED] = "embedded",
	[CT_SRC_TLS] = "tls",
	[CT_SRC_OCSP] = "ocsp",
};

const char *const ct_sct_status_str[] = {
	[CT_SCT_VALID] = "valid",
	[CT_SCT_INVALID] = "invalid",
	[CT_SCT_UNKNOWN_LOG] = "unknown_log",
	[CT_SCT_FUTURE] = "future",
	[CT_SCT_UNVERIFIED] = "unverified",
};

/*
 * Verdict cache: a reconnect presents the same certificate and SCTs, and
 * their signatures need checking once per list.  Direct-mapped, keyed by
 * SHA-256 over the leaf, the issuer and every SCT with its source.
 */
#define CACHE_SLOTS	64

struct cache_slot {
	uint8_t			 key[32];
	const struct ct_loglist	*list;
	size_t			 nscts;
	struct ct_sct		 scts[CT_MAX_SCTS];
};

static struct cache_slot cache[CACHE_SLOTS];
static struct ct_cache_stats stats;

const char *const ct_policy_str[] = {
	[CT_POLICY_CHROME] = "chrome",
	[CT_POLICY_APPLE] = "apple",
};

/* n decimal digits at *p, advancing it; -1 if there are fewer. */
static int
take_digits(const char **p, int n)
{
	int v = 0;

	for (; n > 0; n--, (*p)++) {
		if (!isdigit((unsigned char)**p))
			return -1;
		v = v * 10 + (**p - '0');
	}
	return v;
}

/* The character c at *p (either case), advancing past it. */
static bool
take_char(const char **p, char c)
{
	if (toupper((unsigned char)**p) != c)
		return false;
	(*p)++;
	return true;
}

/* Whether day d of month mo (1-12) of year y exists. */
static bool
day_exists(int y, int mo, int d)
{
	static const int mdays[12] = {
		31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
	};
	int leap = mo == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);

	return d >= 1 && d <= mdays[mo - 1] + leap;
}

/* UTC fields as Unix seconds, or -1. */
static time_t
utc_seconds(int y, int mo, int d, int h, int mi, int sec)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	return timegm(&tm);
}

/*
 * RFC 3339 5.6, by the letter: every field in its range (the day within
 * its month, a leap second allowed), T and Z in either case (its NOTE).
 */
int
ct_parse_rfc3339(const char *s, int64_t *ms)
{
	const char *p = s;
	int64_t frac = 0, scale = 100, off = 0;
	int y, mo, d, h, mi, sec, oh, om;
	time_t t;

	if ((y = take_digits(&p, 4)) < 0 || !take_char(&p, '-') ||
	    (mo = take_digits(&p, 2)) < 1 || mo > 12 || !take_char(&p, '-') ||
	    (d = take_digits(&p, 2)) < 1 || !take_char(&p, 'T') ||
	    (h = take_digits(&p, 2)) < 0 || h > 23 || !take_char(&p, ':') ||
	    (mi = take_digits(&p, 2)) < 0 || mi > 59 || !take_char(&p, ':') ||
	    (sec = take_digits(&p, 2)) < 0 || sec > 60)
		return -1;
	if (!day_exists(y, mo, d))
		return -1;
	if (*p == '.') {
		if (!isdigit((unsigned char)p[1]))
			return -1;
		for (p++; isdigit((unsigned char)*p); p++) {
			frac += (*p - '0') * scale;
			scale /= 10;
		}
	}
	if (take_char(&p, 'Z'))
		;
	else if (*p == '+' || *p == '-') {
		int sign = *p++ == '+' ? 1 : -1;

		if ((oh = take_digits(&p, 2)) < 0 || oh > 23 || !take_char(&p, ':') ||
		    (om = take_digits(&p, 2)) < 0 || om > 59)
			return -1;
		off = (int64_t)(oh * 3600 + om * 60) * sign;
	} else
		return -1;
	if (*p != '\0')
		return -1;
	if ((t = utc_seconds(y, mo, d, h, mi, sec)) == (time_t)-1)
		return -1;
	*ms = ((int64_t)t - off) * 1000 + frac;
	return 0;
}

/*
 * An HTTP-date in the IMF-fixdate form every current server sends (RFC
 * 9110 5.6.7): "Sun, 06 Nov 1994 08:49:37 GMT", each field in its range
 * and the weekday the date's own.  Trailing blanks aside, nothing else.
 */
int
ct_parse_http_date(const char *s, int64_t *ms)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	static const char days[] = "ThuFriSatSunMonTueWed";	/* from 1970 */
	const char *p = s + 5;
	int y, mo, d, h, mi, sec;
	time_t t;

	if (strlen(s) < 29 || s[3] != ',' || s[4] != ' ' ||
	    (d = take_digits(&p, 2)) < 0 || *p++ != ' ')
		return -1;
	for (mo = 1; mo <= 12; mo++)
		if (strncmp(p, months + (mo - 1) * 3, 3) == 0)
			break;
	p += 3;
	if (mo > 12 || *p++ != ' ' || (y = take_digits(&p, 4)) < 1970 ||
	    *p++ != ' ' || (h = take_digits(&p, 2)) < 0 || h > 23 ||
	    *p++ != ':' || (mi = take_digits(&p, 2)) < 0 || mi > 59 ||
	    *p++ != ':' || (sec = take_digits(&p, 2)) < 0 || sec > 60 ||
	    strncmp(p, " GMT", 4) != 0 || !day_exists(y, mo, d))
		return -1;
	for (p += 4; *p == ' ' || *p == '\t' || *p == '\r'; p++)
		;
	if (*p != '\0' ||
	    (t = utc_seconds(y, mo, d, h, mi, sec)) == (time_t)-1 ||
	    strncmp(s, days + (t / 86400) % 7 * 3, 3) != 0)
		return -1;
	*ms = (int64_t)t * 1000;
	return 0;
}

const char *
ct_format_time(int64_t ms, char *buf, size_t bufsz)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL ||
	    strftime(buf, bufsz, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, bufsz, "%lld ms", (long long)ms);
	return buf;
}

/* SHA-256 fetched once: EVP_sha256() is looked up again on each use. */
static const EVP_MD *
sha256(void)
{
	static EVP_MD *md;

	if (md == NULL && (md = EVP_MD_fetch(NULL, "SHA2-256", NULL)) == NULL)
		md = (EVP_MD *)EVP_sha256();
	return md;
}

static int
b64_decode(const char *s, uint8_t **out, size_t *outlen)
{
	size_t len = strlen(s);
	int n, pad = 0;

	if (len == 0 || len % 4 != 0)
		return -1;
	if ((*out = malloc(len / 4 * 3)) == NULL)
		return -1;
	n = EVP_DecodeBlock(*out, (const unsigned char *)s, (int)len);
	if (n < 0) {
		free(*out);
		*out = NULL;	/* the caller frees what it got */
		return -1;
	}
	pad = (s[len - 1] == '=') + (s[len - 2] == '=');
	*outlen = (size_t)n - (size_t)pad;
	return 0;
}

static int
find_operator(struct ct_loglist *list, const char *name)
{
	size_t i;

	for (i = 0; i < list->noperators; i++)
		if (strcmp(list->operators[i], name) == 0)
			return (int)i;
	return -1;
}

/* Index of name among the operators, added when new; -1 on failure. */
static int
operator_index(struct ct_loglist *list, const char *name)
{
	char **p;
	int i = find_operator(list, name);

	if (i >= 0)
		return i;
	p = reallocarray(list->operators, list->noperators + 1, sizeof(*p));
	if (p == NULL)
		return -1;
	list->operators = p;
	if ((p[list->noperators] = strdup(name)) == NULL)
		return -1;
	return (int)list->noperators++;
}

/* Fill log from the JSON entry; NULL or why it is unusable. */
static const char *
parse_log(struct ct_loglist *list, struct ct_log *log, json_t *j, int op)
{
	const char *key_b64, *id_b64, *name;
	uint8_t *der = NULL, *id = NULL, md[EVP_MAX_MD_SIZE];
	const unsigned char *p;
	unsigned int mdlen;
	size_t derlen, idlen;
	json_t *state, *prev, *v;
	const char *err = NULL;
	void *iter;
	size_t i;
	int st;

	log->op = op;
	v = json_object_get(j, "description");
	log->description = strdup(json_is_string(v) ? json_string_value(v) :
	    "(no description)");
	if (log->description == NULL)
		return "out of memory";
	key_b64 = json_string_value(json_object_get(j, "key"));
	id_b64 = json_string_value(json_object_get(j, "log_id"));
	if (key_b64 == NULL || b64_decode(key_b64, &der, &derlen) != 0)
		return "no key, or a key that is not base64";
	p = der;
	log->key = d2i_PUBKEY(NULL, &p, (long)derlen);
	if (log->key == NULL || p != der + derlen) {
		err = "key is not a DER SubjectPublicKeyInfo";
		goto done;
	}
	if (EVP_Digest(der, derlen, md, &mdlen, sha256(), NULL) != 1) {
		err = "cannot hash the key";
		goto done;
	}
	memcpy(log->id, md, CT_LOG_ID_LEN);
	/*
	 * OpenSSL 3 looks up the algorithm for every new context; a context
	 * made once per log and reused keeps an SCT check near the cost of
	 * the signature itself (ct-notes.md 0.4).
	 */
	if ((log->vctx = EVP_PKEY_CTX_new(log->key, NULL)) == NULL ||
	    EVP_PKEY_verify_init(log->vctx) != 1 ||
	    EVP_PKEY_CTX_set_signature_md(log->vctx, sha256()) != 1) {
		err = "key type not usable for SCT signatures";
		goto done;
	}
	/* The id must be the key's hash, or an SCT could name another key. */
	if (id_b64 != NULL && (b64_decode(id_b64, &id, &idlen) != 0 ||
	    idlen != CT_LOG_ID_LEN || memcmp(id, md, CT_LOG_ID_LEN) != 0)) {
		err = "log_id is not the SHA-256 of its key";
		goto done;
	}
	state = json_object_get(j, "state");
	if (!json_is_object(state) || json_object_size(state) != 1) {
		err = "state must hold exactly one state";
		goto done;
	}
	iter = json_object_iter(state);
	name = json_object_iter_key(iter);
	for (st = CT_LOG_PENDING; st <= CT_LOG_REJECTED; st++)
		if (strcmp(name, ct_log_state_str[st]) == 0)
			break;
	if (st > CT_LOG_REJECTED) {
		err = "unknown state";
		goto done;
	}
	log->state = (enum ct_log_state)st;
	v = json_object_get(json_object_iter_value(iter), "timestamp");
	if (!json_is_string(v) ||
	    ct_parse_rfc3339(json_string_value(v), &log->state_ms) != 0) {
		err = "state has no RFC 3339 timestamp";
		goto done;
	}
	prev = json_object_get(j, "previous_operators");
	if (json_is_array(prev) && json_array_size(prev) > 0) {
		log->prev = calloc(json_array_size(prev), sizeof(*log->prev));
		if (log->prev == NULL) {
			err = "out of memory";
			goto done;
		}
		json_array_foreach(prev, i, v) {
			const char *pn = json_string_value(json_object_get(v,
			    "name"));
			const char *pe = json_string_value(json_object_get(v,
			    "end_time"));
			struct ct_prev_operator *po = &log->prev[log->nprev];

			if (pn == NULL || pe == NULL ||
			    ct_parse_rfc3339(pe, &po->end_ms) != 0 ||
			    (po->op = operator_index(list, pn)) < 0) {
				err = "bad previous_operators entry";
				goto done;
			}
			log->nprev++;
		}
	}
done:
	free(der);
	free(id);
	return err;
}

static void
log_free(struct ct_log *log)
{
	EVP_PKEY_CTX_free(log->vctx);
	free(log->description);
	EVP_PKEY_free(log->key);
	free(log->prev);
}

static void
add_logs(struct ct_loglist *list, json_t *arr, int op, bool tiled,
    const char *name, FILE *errs)
{
	json_t *j;
	size_t i;

	json_array_foreach(arr, i, j) {
		struct ct_log log, *p;
		const char *err;

		memset(&log, 0, sizeof(log));
		log.tiled = tiled;
		if (!json_is_object(j))
			err = "not an object";
		else
			err = parse_log(list, &log, j, op);
		if (err == NULL && ct_loglist_find(list, log.id,
		    CT_LOG_ID_LEN) != NULL)
			err = "listed twice";
		if (err != NULL) {
			fprintf(errs, "%s: operator '%s': log '%s': %s; "
			    "skipped\n", name, list->operators[op],
			    log.description ? log.description : "?", err);
			log_free(&log);
			continue;
		}
		p = reallocarray(list->logs, list->nlogs + 1, sizeof(*p));
		if (p == NULL) {
			log_free(&log);
			continue;
		}
		list->logs = p;
		list->logs[list->nlogs++] = log;
	}
}

struct ct_loglist *
ct_loglist_parse(const char *json, size_t len, const char *name, FILE *errs)
{
	struct ct_loglist *list;
	json_error_t jerr;
	json_t *root, *ops, *o, *v;
	size_t i;

	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		fprintf(errs, "%s:%d: not JSON: %s\n", name, jerr.line,
		    jerr.text);
		return NULL;
	}
	ops = json_object_get(root, "operators");
	if (!json_is_array(ops)) {
		fprintf(errs, "%s: no \"operators\" array: not a v3 log list\n",
		    name);
		json_decref(root);
		return NULL;
	}
	if ((list = calloc(1, sizeof(*list))) == NULL) {
		json_decref(root);
		return NULL;
	}
	v = json_object_get(root, "log_list_timestamp");
	if (json_is_string(v) && ct_parse_rfc3339(json_string_value(v),
	    &list->timestamp_ms) != 0)
		fprintf(errs, "%s: log_list_timestamp '%s' is not RFC 3339\n",
		    name, json_string_value(v));
	v = json_object_get(root, "version");
	if (json_is_string(v))
		list->version = strdup(json_string_value(v));
	else if (json_is_integer(v) &&
	    (list->version = malloc(24)) != NULL)
		snprintf(list->version, 24, "%lld",
		    (long long)json_integer_value(v));
	json_array_foreach(ops, i, o) {
		const char *opname = json_string_value(json_object_get(o,
		    "name"));
		int op;

		if (!json_is_object(o) || opname == NULL) {
			fprintf(errs, "%s: operator %zu has no name; "
			    "skipped\n", name, i);
			continue;
		}
		if (find_operator(list, opname) >= 0 &&
		    json_object_get(o, "logs") != NULL) {
			/* Named before only as a previous operator: fine. */
		}
		if ((op = operator_index(list, opname)) < 0)
			continue;
		add_logs(list, json_object_get(o, "logs"), op, false, name,
		    errs);
		add_logs(list, json_object_get(o, "tiled_logs"), op, true,
		    name, errs);
	}
	json_decref(root);
	if (list->nlogs == 0) {
		fprintf(errs, "%s: no usable log in the list\n", name);
		ct_loglist_free(list);
		return NULL;
	}
	return list;
}

struct ct_loglist *
ct_loglist_load(const char *path, FILE *errs)
{
	struct ct_loglist *list = NULL;
	struct stat st;
	char *buf = NULL;
	const char *why;
	FILE *fp;
	size_t n;

	if ((fp = sandbox_fopen_regular(path, &why)) == NULL) {
		fprintf(errs, "%s: %s\n", path, why);
		return NULL;
	}
	if (fstat(fileno(fp), &st) == -1 || st.st_size > 64 * 1024 * 1024 ||
	    (buf = malloc((size_t)st.st_size + 1)) == NULL) {
		fprintf(errs, "%s: cannot read (too large?)\n", path);
		goto done;
	}
	n = fread(buf, 1, (size_t)st.st_size, fp);
	if (ferror(fp)) {
		fprintf(errs, "%s: %s\n", path, strerror(errno));
		goto done;
	}
	list = ct_loglist_parse(buf, n, path, errs);
	/* Apple's layout carries no log_list_timestamp: date it by the file. */
	if (list != NULL && list->timestamp_ms == 0) {
		list->timestamp_ms = (int64_t)st.st_mtime * 1000;
		list->dated_by_file = true;
	}
done:
	free(buf);
	fclose(fp);
	return list;
}

/*
 * How far ahead of this clock a list may be dated: a day of clock skew.
 * An installed list dated further ahead (installed before this check)
 * does not hold a newer real one back.
 */
#define FUTURE_SLACK_MS	(86400 * 1000LL)

/* Whether the file at path holds exactly the len bytes at json. */
static bool
same_bytes(const char *path, const char *json, size_t len)
{
	char chunk[8192];
	const char *why;
	size_t off = 0, n;
	FILE *fp;
	bool same = true;

	if ((fp = sandbox_fopen_regular(path, &why)) == NULL)
		return false;
	while (same && (n = fread(chunk, 1, sizeof(chunk), fp)) > 0) {
		same = n <= len - off && memcmp(chunk, json + off, n) == 0;
		off += n;
	}
	same = same && !ferror(fp) && off == len;
	fclose(fp);
	return same;
}

int
ct_loglist_install(const char *path, const char *json, size_t len,
    const char *origin, int64_t served_ms, int64_t installed_ms,
    long max_age_sec, FILE *out, FILE *errs)
{
	struct ct_loglist *list;
	char *tmp = NULL, *dir = NULL, when[40], then[40];
	int fd = -1, dfd = -1, rc = -1;
	int64_t age_ms, now_ms;
	size_t done = 0;

	if ((list = ct_loglist_parse(json, len, origin, errs)) == NULL)
		return -1;
	if (list->timestamp_ms == 0) {
		/*
		 * Dated by the fetch, a stale mirror's list would look new
		 * every day, and a replayed one newer than the list in place.
		 */
		if (served_ms <= 0) {
			fprintf(errs, "%s: no log_list_timestamp, and %s from "
			    "the server: the list's age cannot be told\n",
			    origin, served_ms == 0 ? "no Last-Modified" :
			    "a Last-Modified that is no HTTP date");
			goto done;
		}
		list->timestamp_ms = served_ms;
		list->dated_by_file = true;
	}
	now_ms = (int64_t)time(NULL) * 1000;
	age_ms = now_ms - list->timestamp_ms;
	ct_format_time(list->timestamp_ms, when, sizeof(when));
	if (-age_ms > FUTURE_SLACK_MS) {
		/*
		 * Installed, it would refuse every real list until that
		 * day as older than itself.
		 */
		fprintf(errs, "%s: the list is of %s, in the future\n", origin,
		    when);
		goto done;
	} else if (list->timestamp_ms < installed_ms &&
	    installed_ms - now_ms <= FUTURE_SLACK_MS &&
	    !same_bytes(path, json, len)) {
		/*
		 * A mirror gone stale, or someone serving an old list.  The
		 * very list in place is no rollback: placed by hand, and so
		 * dated by when it was, it is dated by its server from now on.
		 */
		fprintf(errs, "%s: the list is of %s, older than the one "
		    "installed (%s)\n", origin, when,
		    ct_format_time(installed_ms, then, sizeof(then)));
		goto done;
	} else if (age_ms / 1000 > max_age_sec) {
		fprintf(errs, "%s: the list is of %s, %lld days old: past "
		    "ct-max-list-age (%ld days), so CT would be report-only "
		    "with it\n", origin, when, (long long)(age_ms / 86400000),
		    max_age_sec / 86400);
		goto done;
	}
	if (asprintf(&tmp, "%s.XXXXXX", path) == -1) {
		tmp = NULL;
		goto done;
	}
	if ((fd = mkstemp(tmp)) == -1) {
		fprintf(errs, "%s: %s\n", tmp, strerror(errno));
		goto done;
	}
	while (done < len) {
		ssize_t n = write(fd, json + done, len - done);

		if (n <= 0) {
			fprintf(errs, "%s: %s\n", tmp, strerror(errno));
			goto done;
		}
		done += (size_t)n;
	}
	/* The file's date is the list's, when the list carries none. */
	if (list->dated_by_file) {
		struct timespec ts[2];

		ts[0].tv_sec = ts[1].tv_sec = (time_t)(list->timestamp_ms /
		    1000);
		ts[0].tv_nsec = ts[1].tv_nsec = 0;
		if (futimens(fd, ts) == -1) {
			fprintf(errs, "%s: %s\n", tmp, strerror(errno));
			goto done;
		}
	}
	/* Readable by the resolver after it dropped privileges. */
	if (fchmod(fd, 0644) == -1 || fsync(fd) == -1 || close(fd) == -1) {
		fd = -1;
		fprintf(errs, "%s: %s\n", tmp, strerror(errno));
		goto done;
	}
	fd = -1;
	if (rename(tmp, path) == -1) {
		fprintf(errs, "%s: %s\n", path, strerror(errno));
		goto done;
	}
	free(tmp);
	tmp = NULL;
	/* The rename itself survives a crash only once the directory is. */
	if ((dir = strdup(path)) != NULL &&
	    (dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY)) != -1) {
		fsync(dfd);
		close(dfd);
	}
	/* Not refused for being older: say what it replaced. */
	if (installed_ms - now_ms > FUTURE_SLACK_MS)
		fprintf(errs, "%s: the list in place was of %s, in the future: "
		    "replaced\n", origin, ct_format_time(installed_ms, then,
		    sizeof(then)));
	fprintf(out, "installed %s from %s: version %s of %s%s, %zu logs of "
	    "%zu operators\n", path, origin, list->version ? list->version :
	    "?", when, list->dated_by_file ? " (Last-Modified)" : "",
	    list->nlogs, list->noperators);
	rc = 0;
done:
	if (fd != -1)
		close(fd);
	if (tmp != NULL)
		unlink(tmp);
	free(tmp);
	free(dir);
	ct_loglist_free(list);
	return rc;
}

void
ct_loglist_free(struct ct_loglist *list)
{
	size_t i;

	if (list == NULL)
		return;
	/* A later list at the same address must not find these checks. */
	for (i = 0; i < CACHE_SLOTS; i++)
		if (cache[i].list == list)
			memset(&cache[i], 0, sizeof(cache[i]));
	for (i = 0; i < list->nlogs; i++)
		log_free(&list->logs[i]);
	for (i = 0; i < list->noperators; i++)
		free(list->operators[i]);
	free(list->logs);
	free(list->operators);
	free(list->version);
	free(list);
}

const struct ct_log *
ct_loglist_find(const struct ct_loglist *list, const uint8_t *id,
    size_t idlen)
{
	size_t i;

	if (list == NULL || idlen != CT_LOG_ID_LEN)
		return NULL;
	for (i = 0; i < list->nlogs; i++)
		if (memcmp(list->logs[i].id, id, CT_LOG_ID_LEN) == 0)
			return &list->logs[i];
	return NULL;
}

int
ct_log_operator_at(const struct ct_log *log, int64_t ts_ms)
{
	const struct ct_prev_operator *best = NULL;
	size_t i;

	/* The earliest handover after ts names who ran the log then. */
	for (i = 0; i < log->nprev; i++)
		if (ts_ms < log->prev[i].end_ms &&
		    (best == NULL || log->prev[i].end_ms < best->end_ms))
			best = &log->prev[i];
	return best ? best->op : log->op;
}

STACK_OF(SCT) *
ct_embedded_scts(X509 *cert)
{
	return X509_get_ext_d2i(cert, NID_ct_precert_scts, NULL, NULL);
}

/* What every SCT of one certificate is signed over, built once. */
struct signed_entry {
	uint8_t	*x509;		/* leaf DER */
	int	 x509_len;
	uint8_t	*tbs;		/* precert TBS: the leaf without its SCT list */
	int	 tbs_len;
	uint8_t	 issuer_key_hash[32];
	bool	 have_issuer;
};

/* One DER header at *p before e: tag, and the content's extent. */
static bool
der_next(const uint8_t **p, const uint8_t *e, uint8_t *tag,
    const uint8_t **content, size_t *len)
{
	const uint8_t *q = *p;
	size_t l = 0, n;

	if (e - q < 2)
		return false;
	*tag = *q++;
	if (*q < 0x80)
		l = *q++;
	else {
		n = *q++ & 0x7f;
		if (n == 0 || n > 3 || (size_t)(e - q) < n)
			return false;
		while (n-- > 0)
			l = l << 8 | *q++;
	}
	if ((size_t)(e - q) < l)
		return false;
	*content = q;
	*len = l;
	*p = q + l;
	return true;
}

static uint8_t *
der_put(uint8_t *p, uint8_t tag, size_t len)
{
	*p++ = tag;
	if (len < 0x80)
		*p++ = (uint8_t)len;
	else if (len < 0x100) {
		*p++ = 0x81;
		*p++ = (uint8_t)len;
	} else if (len < 0x10000) {
		*p++ = 0x82;
		*p++ = (uint8_t)(len >> 8);
		*p++ = (uint8_t)len;
	} else {
		*p++ = 0x83;
		*p++ = (uint8_t)(len >> 16);
		*p++ = (uint8_t)(len >> 8);
		*p++ = (uint8_t)len;
	}
	return p;
}

static size_t
der_hdr_len(size_t len)
{
	return len < 0x80 ? 2 : len < 0x100 ? 3 : len < 0x10000 ? 4 : 5;
}

/*
 * The precert TBS of RFC 6962 3.2: the leaf's TBSCertificate without its
 * SCT list extension (or a poison), cut out of the DER directly.  OpenSSL
 * would dup and re-encode the certificate, which costs more than checking
 * two signatures.  Returns a malloc'd buffer and its length, or NULL.
 */
static uint8_t *
precert_tbs(const uint8_t *der, size_t derlen, size_t *outlen)
{
	/* Content octets of the two OIDs, 1.3.6.1.4.1.11129.2.4.{2,3}. */
	static const uint8_t sct_oid[] = { 0x2b, 0x06, 0x01, 0x04, 0x01,
	    0xd6, 0x79, 0x02, 0x04, 0x02 };
	const uint8_t *p = der, *e = der + derlen, *c, *tbs, *tbs_end, *x;
	const uint8_t *exts = NULL, *exts_end = NULL, *a3 = NULL, *a3_end;
	size_t len, keep = 0, exts_len, a3_len, tbs_len;
	uint8_t tag, *out, *o;

	if (!der_next(&p, e, &tag, &c, &len) || tag != 0x30)
		return NULL;
	p = c;
	if (!der_next(&p, c + len, &tag, &tbs, &len) || tag != 0x30)
		return NULL;
	tbs_end = tbs + len;
	for (p = tbs; p < tbs_end;) {
		x = p;
		if (!der_next(&p, tbs_end, &tag, &c, &len))
			return NULL;
		if (tag == 0xa3) {
			a3 = x;
			a3_end = p;
			x = c;
			if (!der_next(&x, c + len, &tag, &exts, &len) ||
			    tag != 0x30)
				return NULL;
			exts_end = exts + len;
		}
	}
	if (a3 == NULL)
		return NULL;
	/* First pass: the size of the extensions that stay. */
	for (p = exts; p < exts_end;) {
		const uint8_t *ext = p, *ec, *oid;
		size_t elen, olen;

		if (!der_next(&p, exts_end, &tag, &ec, &elen))
			return NULL;
		x = ec;
		if (!der_next(&x, ec + elen, &tag, &oid, &olen) || tag != 0x06)
			return NULL;
		if (olen == sizeof(sct_oid) && memcmp(oid, sct_oid,
		    sizeof(sct_oid) - 1) == 0 &&
		    (oid[olen - 1] == 2 || oid[olen - 1] == 3))
			continue;
		keep += (size_t)(p - ext);
	}
	exts_len = keep ? der_hdr_len(keep) + keep : 0;
	a3_len = exts_len ? der_hdr_len(exts_len) + exts_len : 0;
	tbs_len = (size_t)(a3 - tbs) + a3_len + (size_t)(tbs_end - a3_end);
	if ((out = malloc(der_hdr_len(tbs_len) + tbs_len)) == NULL)
		return NULL;
	o = der_put(out, 0x30, tbs_len);
	memcpy(o, tbs, (size_t)(a3 - tbs));
	o += a3 - tbs;
	if (keep) {
		o = der_put(o, 0xa3, exts_len);
		o = der_put(o, 0x30, keep);
		for (p = exts; p < exts_end;) {
			const uint8_t *ext = p, *ec, *oid;
			size_t elen, olen;

			der_next(&p, exts_end, &tag, &ec, &elen);
			x = ec;
			der_next(&x, ec + elen, &tag, &oid, &olen);
			if (olen == sizeof(sct_oid) && memcmp(oid, sct_oid,
			    sizeof(sct_oid) - 1) == 0 &&
			    (oid[olen - 1] == 2 || oid[olen - 1] == 3))
				continue;
			memcpy(o, ext, (size_t)(p - ext));
			o += p - ext;
		}
	}
	memcpy(o, a3_end, (size_t)(tbs_end - a3_end));
	o += tbs_end - a3_end;
	*outlen = (size_t)(o - out);
	return out;
}

static void
entry_init(struct signed_entry *e, X509 *leaf, X509 *issuer)
{
	size_t len;

	memset(e, 0, sizeof(*e));
	e->x509_len = i2d_X509(leaf, &e->x509);
	if (issuer != NULL) {
		unsigned char *der = NULL;
		unsigned int mdlen;
		int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(issuer), &der);

		e->have_issuer = n > 0 && EVP_Digest(der, (size_t)n,
		    e->issuer_key_hash, &mdlen, sha256(), NULL) == 1;
		OPENSSL_free(der);
	}
	if (e->x509_len > 0 &&
	    (e->tbs = precert_tbs(e->x509, (size_t)e->x509_len, &len)) != NULL)
		e->tbs_len = (int)len;
}

static void
entry_free(struct signed_entry *e)
{
	OPENSSL_free(e->x509);
	free(e->tbs);
}

static void
put_be(uint8_t *p, uint64_t v, int n)
{
	while (n-- > 0) {
		p[n] = (uint8_t)v;
		v >>= 8;
	}
}

/* Verify one SCT's signature against log's key. */
static enum ct_sct_status
verify_sct(const struct signed_entry *e, SCT *sct, const struct ct_log *log)
{
	unsigned char *ext = NULL, *sig = NULL;
	size_t extlen = SCT_get0_extensions(sct, &ext);
	size_t siglen = SCT_get0_signature(sct, &sig);
	ct_log_entry_type_t type = SCT_get_log_entry_type(sct);
	const uint8_t *body;
	size_t bodylen, off = 0, need;
	uint8_t *buf, md[32];
	int ok = 0;

	if (SCT_get_version(sct) != SCT_VERSION_V1 || sig == NULL ||
	    siglen == 0)
		return CT_SCT_INVALID;
	if (type == CT_LOG_ENTRY_TYPE_PRECERT) {
		if (!e->have_issuer)
			return CT_SCT_UNVERIFIED;
		body = e->tbs;
		bodylen = e->tbs_len > 0 ? (size_t)e->tbs_len : 0;
	} else {
		body = e->x509;
		bodylen = e->x509_len > 0 ? (size_t)e->x509_len : 0;
	}
	if (bodylen == 0 || bodylen > 0xffffff || extlen > 0xffff)
		return CT_SCT_INVALID;
	need = 1 + 1 + 8 + 2 + 32 + 3 + bodylen + 2 + extlen;
	if ((buf = malloc(need)) == NULL)
		return CT_SCT_INVALID;
	/* RFC 6962 3.2 digitally-signed struct. */
	buf[off++] = 0;			/* v1 */
	buf[off++] = 0;			/* certificate_timestamp */
	put_be(buf + off, SCT_get_timestamp(sct), 8);
	off += 8;
	put_be(buf + off, type == CT_LOG_ENTRY_TYPE_PRECERT ? 1 : 0, 2);
	off += 2;
	if (type == CT_LOG_ENTRY_TYPE_PRECERT) {
		memcpy(buf + off, e->issuer_key_hash, 32);
		off += 32;
	}
	put_be(buf + off, bodylen, 3);
	off += 3;
	memcpy(buf + off, body, bodylen);
	off += bodylen;
	put_be(buf + off, extlen, 2);
	off += 2;
	if (extlen)
		memcpy(buf + off, ext, extlen);
	off += extlen;
	if (EVP_Digest(buf, off, md, NULL, sha256(), NULL) == 1)
		ok = EVP_PKEY_verify(log->vctx, sig, siglen, md, sizeof(md)) == 1;
	free(buf);
	return ok ? CT_SCT_VALID : CT_SCT_INVALID;
}

size_t
ct_check_scts(const struct ct_loglist *list, X509 *leaf, X509 *issuer,
    const STACK_OF(SCT) *scts, int64_t now_ms, struct ct_sct *out,
    size_t max)
{
	struct signed_entry e;
	size_t n = 0;
	int i;

	entry_init(&e, leaf, issuer);
	for (i = 0; i < sk_SCT_num(scts) && n < max; i++) {
		SCT *sct = sk_SCT_value(scts, i);
		struct ct_sct *r = &out[n++];
		unsigned char *id = NULL;
		size_t idlen = SCT_get0_log_id(sct, &id);

		memset(r, 0, sizeof(*r));
		switch (SCT_get_source(sct)) {
		case SCT_SOURCE_TLS_EXTENSION:
			r->source = CT_SRC_TLS;
			break;
		case SCT_SOURCE_OCSP_STAPLED_RESPONSE:
			r->source = CT_SRC_OCSP;
			break;
		default:
			r->source = CT_SRC_EMBEDDED;
			break;
		}
		if (id != NULL && idlen == CT_LOG_ID_LEN)
			memcpy(r->log_id, id, CT_LOG_ID_LEN);
		r->timestamp_ms = (int64_t)SCT_get_timestamp(sct);
		r->log = ct_loglist_find(list, id, idlen);
		if (r->log == NULL)
			r->status = CT_SCT_UNKNOWN_LOG;
		else if (r->timestamp_ms > now_ms)
			r->status = CT_SCT_FUTURE;
		else
			r->status = verify_sct(&e, sct, r->log);
	}
	entry_free(&e);
	return n;
}

/* In a state that counts at now_ms: qualified, usable or read-only. */
static bool
log_current(const struct ct_log *log, int64_t now_ms)
{
	switch (log->state) {
	case CT_LOG_QUALIFIED:
	case CT_LOG_USABLE:
	case CT_LOG_READONLY:
		return true;
	case CT_LOG_RETIRED:
		/* Checked at a time before it retired: still current then. */
		return now_ms < log->state_ms;
	default:
		return false;
	}
}

static bool
log_retired_by(const struct ct_log *log, int64_t now_ms)
{
	return log->state == CT_LOG_RETIRED && log->state_ms <= now_ms;
}

/* Distinct logs and operators among the SCTs marked in use[]. */
static void
count_distinct(const struct ct_sct *s, size_t n, const bool *use,
    size_t *nlogs, size_t *nops, size_t per_op_max)
{
	size_t i, j, ops = 0, logs = 0;
	int opsl[64];
	size_t opcount[64];

	for (i = 0; i < n; i++) {
		int op;

		if (!use[i])
			continue;
		for (j = 0; j < i; j++)
			if (use[j] && s[j].log == s[i].log)
				break;
		if (j < i)
			continue;	/* this log was counted already */
		op = ct_log_operator_at(s[i].log, s[i].timestamp_ms);
		for (j = 0; j < ops; j++)
			if (opsl[j] == op)
				break;
		if (j == ops) {
			if (ops == 64)
				continue;
			opsl[ops] = op;
			opcount[ops++] = 0;
		}
		/* Apple counts at most per_op_max logs of one operator. */
		if (per_op_max == 0 || opcount[j] < per_op_max) {
			opcount[j]++;
			logs++;
		}
	}
	*nlogs = logs;
	*nops = ops;
}

static bool
chrome(const struct ct_sct *s, size_t n, int64_t lifetime, int64_t now_ms,
    char *why, size_t whysz)
{
	bool use[256] = { false }, any_current = false;
	size_t i, need, nlogs, nops, tlogs, tops;
	int64_t earliest = INT64_MAX;

	if (n > 256)
		n = 256;
	need = lifetime <= CHROME_SHORT_DAYS * DAY_SEC ? 2 : 3;
	for (i = 0; i < n; i++)
		if (s[i].status == CT_SCT_VALID && s[i].timestamp_ms < earliest)
			earliest = s[i].timestamp_ms;
	/* Embedded: retired logs count if the earliest SCT predates it. */
	for (i = 0; i < n; i++) {
		const struct ct_log *l = s[i].log;

		if (s[i].status != CT_SCT_VALID || s[i].source !=
		    CT_SRC_EMBEDDED)
			continue;
		if (log_current(l, now_ms)) {
			use[i] = true;
			any_current = true;
		} else if (log_retired_by(l, now_ms) && earliest < l->state_ms)
			use[i] = true;
	}
	count_distinct(s, n, use, &nlogs, &nops, 0);
	if (any_current && nlogs >= need && nops >= 2) {
		snprintf(why, whysz, "chrome: embedded SCTs from %zu logs of "
		    "%zu operators (need %zu logs, 2 operators)", nlogs, nops,
		    need);
		return true;
	}
	/* TLS-delivered: current logs only; OCSP SCTs no longer count. */
	for (i = 0; i < n; i++)
		use[i] = s[i].status == CT_SCT_VALID &&
		    s[i].source == CT_SRC_TLS && log_current(s[i].log, now_ms);
	count_distinct(s, n, use, &tlogs, &tops, 0);
	if (tlogs >= 2 && tops >= 2) {
		snprintf(why, whysz, "chrome: TLS SCTs from %zu logs of %zu "
		    "operators", tlogs, tops);
		return true;
	}
	snprintf(why, whysz, "chrome: embedded SCTs from %zu logs of %zu "
	    "operators%s, need %zu logs and 2 operators (lifetime %lld days); "
	    "TLS SCTs from %zu logs of %zu operators, need 2 and 2", nlogs,
	    nops, nlogs && !any_current ? " none of them current" : "", need,
	    (long long)((lifetime + DAY_SEC - 1) / DAY_SEC), tlogs, tops);
	return false;
}

static bool
apple(const struct ct_sct *s, size_t n, int64_t lifetime, int64_t now_ms,
    char *why, size_t whysz)
{
	bool use[256] = { false }, current_embedded = false, via_tls = false;
	size_t i, need, per_op, nonce, nonceops, ncur, ncurops, nemb, nembops;
	int64_t days = (lifetime + 1 + DAY_SEC - 1) / DAY_SEC;	/* inclusive */

	if (n > 256)
		n = 256;
	if (days > APPLE_MAX_DAYS) {
		snprintf(why, whysz, "apple: lifetime of %lld days is over %d",
		    (long long)days, APPLE_MAX_DAYS);
		return false;
	}
	need = days <= CHROME_SHORT_DAYS ? 2 : 3;
	per_op = days <= CHROME_SHORT_DAYS ? 1 : 2;
	/* Once or currently approved: an SCT from before retirement. */
	for (i = 0; i < n; i++)
		use[i] = s[i].status == CT_SCT_VALID &&
		    (log_current(s[i].log, now_ms) ||
		    (log_retired_by(s[i].log, now_ms) &&
		    s[i].timestamp_ms < s[i].log->state_ms));
	count_distinct(s, n, use, &nonce, &nonceops, 0);
	if (nonce < 2) {
		snprintf(why, whysz, "apple: SCTs from %zu approved logs, "
		    "need 2", nonce);
		return false;
	}
	for (i = 0; i < n; i++) {
		use[i] = s[i].status == CT_SCT_VALID &&
		    log_current(s[i].log, now_ms);
		if (use[i] && s[i].source != CT_SRC_EMBEDDED)
			via_tls = true;
	}
	count_distinct(s, n, use, &ncur, &ncurops, 0);
	if (ncur >= 2 && via_tls) {
		snprintf(why, whysz, "apple: SCTs from %zu current logs, one "
		    "delivered in the handshake", ncur);
		return true;
	}
	for (i = 0; i < n; i++) {
		bool ok = s[i].status == CT_SCT_VALID &&
		    s[i].source == CT_SRC_EMBEDDED;

		if (ok && log_current(s[i].log, now_ms))
			current_embedded = true;
		use[i] = ok && (log_current(s[i].log, now_ms) ||
		    (log_retired_by(s[i].log, now_ms) &&
		    s[i].timestamp_ms < s[i].log->state_ms));
	}
	count_distinct(s, n, use, &nemb, &nembops, per_op);
	if (current_embedded && nemb >= need) {
		snprintf(why, whysz, "apple: embedded SCTs from %zu logs "
		    "(at most %zu per operator; need %zu)", nemb, per_op, need);
		return true;
	}
	snprintf(why, whysz, "apple: embedded SCTs from %zu logs counting at "
	    "most %zu per operator%s, need %zu (lifetime %lld days)", nemb,
	    per_op, current_embedded ? "" : ", none from a current log", need,
	    (long long)days);
	return false;
}

bool
ct_policy_compliant(enum ct_policy policy, const struct ct_sct *scts,
    size_t n, int64_t not_before, int64_t not_after, int64_t now_ms,
    char *why, size_t whysz)
{
	int64_t lifetime = not_after - not_before;

	if (policy == CT_POLICY_APPLE)
		return apple(scts, n, lifetime, now_ms, why, whysz);
	return chrome(scts, n, lifetime, now_ms, why, whysz);
}

static bool
cache_key(X509 *leaf, X509 *issuer, const STACK_OF(SCT) *scts, uint8_t *key)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char *der = NULL;
	bool ok = md != NULL && EVP_DigestInit_ex(md, sha256(), NULL);
	int i, len;

	for (i = -2; ok && i < sk_SCT_num(scts); i++) {
		uint8_t src;

		if (i == -2)
			len = i2d_X509(leaf, &der);
		else if (i == -1)
			len = issuer ? i2d_X509(issuer, &der) : 0;
		else {
			src = (uint8_t)SCT_get_source(sk_SCT_value(scts, i));
			ok = EVP_DigestUpdate(md, &src, 1);
			len = i2o_SCT(sk_SCT_value(scts, i), &der);
		}
		if (len < 0)
			ok = false;
		else if (len > 0)
			ok = ok && EVP_DigestUpdate(md, der, (size_t)len);
		/* The length keeps one item from running into the next. */
		ok = ok && EVP_DigestUpdate(md, &len, sizeof(len));
		OPENSSL_free(der);
		der = NULL;
	}
	ok = ok && EVP_DigestFinal_ex(md, key, NULL);
	EVP_MD_CTX_free(md);
	return ok;
}

void
ct_cache_clear(void)
{
	memset(cache, 0, sizeof(cache));
	memset(&stats, 0, sizeof(stats));
}

const struct ct_cache_stats *
ct_cache_stats(void)
{
	return &stats;
}

static int64_t
asn1_time_sec(const ASN1_TIME *t)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm);
}

void
ct_evaluate(const struct ct_loglist *list, enum ct_policy policy, X509 *leaf,
    X509 *issuer, const STACK_OF(SCT) *scts, int64_t now_ms,
    struct ct_verdict *v)
{
	struct cache_slot *slot = NULL;
	uint8_t key[32];
	bool cacheable = true;
	size_t i;

	if (list != NULL && cache_key(leaf, issuer, scts, key)) {
		slot = &cache[key[0] % CACHE_SLOTS];
		if (slot->list == list && memcmp(slot->key, key, 32) == 0) {
			stats.hits++;
			v->nscts = slot->nscts;
			memcpy(v->scts, slot->scts, sizeof(v->scts[0]) *
			    slot->nscts);
			goto policy;
		}
	}
	stats.misses++;
	v->nscts = ct_check_scts(list, leaf, issuer, scts, now_ms, v->scts,
	    CT_MAX_SCTS);
	/* A future SCT may turn valid: check those again next time. */
	for (i = 0; i < v->nscts; i++)
		if (v->scts[i].status == CT_SCT_FUTURE)
			cacheable = false;
	if (slot != NULL && cacheable) {
		memcpy(slot->key, key, 32);
		slot->list = list;
		slot->nscts = v->nscts;
		memcpy(slot->scts, v->scts, sizeof(v->scts[0]) * v->nscts);
	}
policy:
	if (v->nscts == 0) {
		v->compliant = false;
		snprintf(v->why, sizeof(v->why), "%s: no SCTs",
		    ct_policy_str[policy]);
		return;
	}
	/* The policy is cheap and depends on the time: always run it. */
	v->compliant = ct_policy_compliant(policy, v->scts, v->nscts,
	    asn1_time_sec(X509_get0_notBefore(leaf)),
	    asn1_time_sec(X509_get0_notAfter(leaf)), now_ms, v->why,
	    sizeof(v->why));
}
