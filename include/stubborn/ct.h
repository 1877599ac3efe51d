/*
 * Certificate Transparency: the log list (v3 JSON layout, Chrome's or
 * Apple's), SCT signature checks with keys parsed once, and the chrome and
 * apple policies (design.md, trust model step 4; ct-notes.md section 2).
 */
#ifndef STUBBORN_CT_H
#define STUBBORN_CT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/ct.h>
#include <openssl/x509.h>

#define CT_LOG_ID_LEN	32

enum ct_log_state {
	CT_LOG_PENDING,
	CT_LOG_QUALIFIED,
	CT_LOG_USABLE,
	CT_LOG_READONLY,
	CT_LOG_RETIRED,
	CT_LOG_REJECTED,
};
extern const char *const ct_log_state_str[];

/* An operator that ran a log until end_ms (previous_operators). */
struct ct_prev_operator {
	int		 op;		/* index into the list's operators */
	int64_t		 end_ms;
};

struct ct_log {
	uint8_t			 id[CT_LOG_ID_LEN];
	char			*description;
	EVP_PKEY		*key;
	EVP_PKEY_CTX		*vctx;		/* ready to verify, made once */
	int			 op;		/* current operator */
	struct ct_prev_operator	*prev;
	size_t			 nprev;
	enum ct_log_state	 state;
	int64_t			 state_ms;	/* when it entered state */
	bool			 tiled;		/* static-ct-api */
};

struct ct_loglist {
	char		**operators;
	size_t		  noperators;
	struct ct_log	 *logs;
	size_t		  nlogs;
	int64_t		  timestamp_ms;	/* log_list_timestamp, or file mtime */
	bool		  dated_by_file;	/* no log_list_timestamp */
	char		 *version;
};

/*
 * Parse a v3-layout list of len bytes; name is for messages.  A broken
 * log entry is reported to errs ("name: log 'X': why") and skipped; the
 * good ones stay.  Returns NULL (reported) when the list as a whole is
 * unusable: not JSON, no operators array, or no usable log at all.
 */
struct ct_loglist *ct_loglist_parse(const char *json, size_t len,
	    const char *name, FILE *errs);

/* Read and parse path (see ct_loglist_parse); dates it by mtime if need. */
struct ct_loglist *ct_loglist_load(const char *path, FILE *errs);

#define CT_LIST_MAX_BYTES	(16 * 1024 * 1024)

/*
 * Validate the list in json (len bytes, fetched from origin) and, when it
 * parses, replace path with it atomically (a temporary file in the same
 * directory, fsync, rename).  A list without log_list_timestamp (Apple's
 * layout) is dated by served_ms, the server's Last-Modified, which also
 * becomes the file's modification time; without either its age cannot be
 * told, and it is refused.  A list older than installed_ms (the list in
 * place; 0 for none) or than max_age_sec is refused: a rollback, or a
 * list that would be report-only the moment it landed.  So is one dated
 * more than a day ahead of the clock, which would refuse every real list
 * until then; a list in place dated so far ahead holds none back (and
 * errs says it was replaced).  What was installed goes to out, problems
 * to errs.  Returns 0, or -1 with path untouched.
 */
int	ct_loglist_install(const char *path, const char *json, size_t len,
	    const char *origin, int64_t served_ms, int64_t installed_ms,
	    long max_age_sec, FILE *out, FILE *errs);

/* NULL is a no-op. */
void	ct_loglist_free(struct ct_loglist *list);

/* The log with this id, or NULL. */
const struct ct_log *ct_loglist_find(const struct ct_loglist *list,
	    const uint8_t *id, size_t idlen);

/* The operator (index) that ran log at time ts_ms. */
int	ct_log_operator_at(const struct ct_log *log, int64_t ts_ms);

enum ct_source {
	CT_SRC_EMBEDDED,
	CT_SRC_TLS,
	CT_SRC_OCSP,
};
extern const char *const ct_source_str[];

enum ct_sct_status {
	CT_SCT_VALID,
	CT_SCT_INVALID,		/* bad signature or unsupported version */
	CT_SCT_UNKNOWN_LOG,
	CT_SCT_FUTURE,		/* timestamp after the time of check */
	CT_SCT_UNVERIFIED,	/* precert SCT without an issuer */
};
extern const char *const ct_sct_status_str[];

/* One SCT as checked. */
struct ct_sct {
	enum ct_source		 source;
	uint8_t			 log_id[CT_LOG_ID_LEN];
	int64_t			 timestamp_ms;
	const struct ct_log	*log;		/* NULL: not in the list */
	enum ct_sct_status	 status;
};

enum ct_policy {
	CT_POLICY_CHROME,
	CT_POLICY_APPLE,
};
extern const char *const ct_policy_str[];

/*
 * Check the signature, log and time of each SCT of scts (any source,
 * borrowed) for leaf issued by issuer (may be NULL: precert SCTs are then
 * unverified) at now_ms.  Fills out (at most max entries) and returns the
 * number written.
 */
size_t	ct_check_scts(const struct ct_loglist *list, X509 *leaf, X509 *issuer,
	    const STACK_OF(SCT) *scts, int64_t now_ms, struct ct_sct *out,
	    size_t max);

/*
 * The policy's verdict on n checked SCTs for a certificate valid from
 * not_before to not_after (Unix seconds), at now_ms.  why (whysz bytes)
 * says what counted, or what was missing.
 */
bool	ct_policy_compliant(enum ct_policy policy, const struct ct_sct *scts,
	    size_t n, int64_t not_before, int64_t not_after, int64_t now_ms,
	    char *why, size_t whysz);

#define CT_MAX_SCTS	32	/* more in one certificate is not credible */

/* The CT step's verdict on one certificate, with every SCT's result. */
struct ct_verdict {
	bool		 compliant;
	char		 why[320];
	struct ct_sct	 scts[CT_MAX_SCTS];
	size_t		 nscts;
};

/*
 * The whole CT step: check scts (borrowed; any source) for leaf and
 * issuer at now_ms, then apply policy.  Fills *v.  SCT checks are cached
 * per (leaf, issuer, SCTs, list); the policy always runs anew.
 */
void	ct_evaluate(const struct ct_loglist *list, enum ct_policy policy,
	    X509 *leaf, X509 *issuer, const STACK_OF(SCT) *scts,
	    int64_t now_ms, struct ct_verdict *v);

struct ct_cache_stats {
	unsigned long	hits;
	unsigned long	misses;
};

/* Forget every cached check (after the list a slot names is freed). */
void	ct_cache_clear(void);
const struct ct_cache_stats *ct_cache_stats(void);

/* The embedded SCTs of cert, or NULL; free with SCT_LIST_free. */
STACK_OF(SCT) *ct_embedded_scts(X509 *cert);

/* Parse an RFC 3339 time ("2025-08-21T12:40:00Z") into ms; 0 or -1. */
int	ct_parse_rfc3339(const char *s, int64_t *ms);

/* Parse an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT") into ms; 0 or -1. */
int	ct_parse_http_date(const char *s, int64_t *ms);

/* Format ms as RFC 3339 in UTC into buf. */
const char *ct_format_time(int64_t ms, char *buf, size_t bufsz);

#endif
