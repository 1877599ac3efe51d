/*
 * The upstream pool: conf order, health with backoff, quarantine after a
 * trust incident, and the one place transports report back to.
 */
#ifndef STUBBORN_UPSTREAM_H
#define STUBBORN_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "stubborn/config.h"
#include "stubborn/trust.h"

struct txq;
struct conn;
struct upstream_pool;
struct tls_gate;
struct ct_loglist;

enum upstream_state {
	UPSTREAM_UP,
	UPSTREAM_DOWN,		/* failing; retried after backoff */
	UPSTREAM_QUARANTINED,	/* trust incident; skipped until it ends */
};
extern const char *const upstream_state_str[];

#define UPSTREAM_RTT_BUCKETS	10

/* What /metrics reports of one upstream. */
struct upstream_stats {
	uint64_t	queries;	/* sent */
	uint64_t	answers;
	uint64_t	errors;		/* failed or timed out */
	uint64_t	handshakes;	/* connections that passed the gate */
	uint64_t	incidents[TRUST_VERDICTS];
	uint64_t	rtt_le[UPSTREAM_RTT_BUCKETS];	/* histogram */
	uint64_t	rtt_count;
	double		rtt_sum;	/* seconds */
};
extern const double upstream_rtt_bounds[UPSTREAM_RTT_BUCKETS];

struct upstream {
	struct upstream_pool	*pool;
	const struct upstream_conf *conf;	/* borrowed from the config */
	unsigned		 index;		/* conf order, < 64 */
	SSL_CTX			*ssl_ctx;
	const struct transport_ops *ops;
	struct conn		*conn;		/* the live connection or NULL */
	enum upstream_state	 state;
	uint64_t		 retry_at_ms;	/* DOWN: monotonic */
	struct event		*probe;		/* DOWN: the retry when due */
	time_t			 quarantine_until;	/* wall clock */
	unsigned		 backoff_sec;
	unsigned		 failures;	/* in a row; an answer resets */
	unsigned		 rtt_ms;	/* EWMA; 0: not measured yet */
	unsigned		 next_addr;	/* bootstrap address to try */
	long			 quarantine_sec;	/* from [trust] */
	struct upstream_stats	 stats;
};

/*
 * Called for each query's outcome: a reply (borrowed for the call), or a
 * failure after which the query should move on; retry_same says the
 * upstream itself is fine (its connection closed under the query).  reply
 * returns false, the query untouched, for a reply that is malformed: the
 * pool then counts it against the upstream and fails the query over.
 */
struct upstream_cbs {
	bool	(*reply)(void *arg, struct txq *q, uint8_t *msg, size_t len);
	void	(*failed)(void *arg, struct txq *q, struct upstream *up,
		    bool retry_same);
	void	*arg;
};

/*
 * A pool for cfg's upstreams (cfg and ct_list, which may be NULL,
 * borrowed for the pool's life).
 * Returns NULL (logged) when a trust store cannot be loaded.
 */
struct upstream_pool *upstream_pool_new(struct event_base *base,
	    const struct config *cfg, const struct ct_loglist *ct_list,
	    const struct upstream_cbs *cbs);
/*
 * Use list (borrowed; NULL: none) for connections opened from now on.
 * The previous list must outlive handshakes under way (seconds).
 */
void	upstream_pool_set_ct_list(struct upstream_pool *pool,
	    const struct ct_loglist *list);

/*
 * After a reload: quarantines, RTTs and statistics of old's upstreams go
 * to those of pool with the same name and URL.
 */
void	upstream_pool_carry(struct upstream_pool *pool,
	    const struct upstream_pool *old);

/* The pool's upstreams, in conf order (for metrics). */
size_t	upstream_pool_count(const struct upstream_pool *pool);
struct upstream *upstream_pool_get(struct upstream_pool *pool, size_t i);

/*
 * True while some upstream is up (for /healthz): connected and trusted,
 * or not tried yet.  When none is, a connection is started to each one
 * whose retry time has come, so the verdict recovers without a query.
 */
bool	upstream_pool_healthy(struct upstream_pool *pool);

/* The CT log list in use, or NULL. */
const struct ct_loglist *upstream_pool_ct_list(const struct upstream_pool *);

/* Close every connection and free the pool; NULL is a no-op. */
void	upstream_pool_free(struct upstream_pool *pool);

/*
 * Close the open connections whose verified chain now holds a key on the
 * deny list; their queries go to the next upstream.
 */
void	upstream_pool_drop_denied(struct upstream_pool *pool);

/*
 * The first usable upstream in conf order that is not in tried (a bit
 * per index): UP, or DOWN with its backoff over; failing those, a DOWN
 * one with 5 s of its backoff over (better a retry than SERVFAIL, but
 * not a handshake per query).  Never a quarantined one.  NULL when none
 * is left.  With up_only, an UP one or NULL: for a second
 * opinion, worth asking only of an upstream known to answer.
 */
struct upstream *upstream_pick(struct upstream_pool *pool, uint64_t tried,
	    bool up_only);

/* Send q to up, opening a connection when there is none. */
void	upstream_send(struct upstream *up, struct txq *q);

/* Take q back from wherever it is attached; no-op when detached. */
void	upstream_cancel(struct txq *q);

/* A reply from up took rtt_ms: fold it into up's RTT average. */
void	upstream_note_rtt(struct upstream *up, uint64_t rtt_ms);

/*
 * q timed out on up: count it against up's health.  Timeouts, unusable
 * answers and connections lost with queries in flight, FAILURES_DOWN in a
 * row with no answer between, mark up down.  q stays attached, its answer
 * still welcome, unless its connection is closed for this (then q is
 * detached, with no callback).
 */
void	upstream_note_timeout(struct upstream *up, struct txq *q);

/*
 * up answered q with something unusable (why, in words): a failure, as a
 * timeout is, so queries stop going there first.
 */
void	upstream_note_failure(struct upstream *up, const char *why);

/*
 * Set gate's CT step for a new connection to up: the upstream's ct mode,
 * report-only while the log list is missing or older than
 * ct-max-list-age (warned about hourly).
 */
void	upstream_gate_init(struct upstream *up, struct tls_gate *gate);

/* Monotonic milliseconds, for deadlines. */
uint64_t upstream_now_ms(void);

#endif
