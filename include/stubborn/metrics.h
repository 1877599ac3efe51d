/*
 * Prometheus text on /metrics and liveness on /healthz, over libevent's
 * evhttp.  Counters are plain globals: one event loop, one thread.  The
 * metric names are a contract (README lists them).
 */
#ifndef STUBBORN_METRICS_H
#define STUBBORN_METRICS_H

#include <stdint.h>

#include <event2/event.h>

#include "stubborn/config.h"

enum metric {
	M_QUERIES_UDP,
	M_QUERIES_TCP,
	M_REFUSED,		/* clients outside allow */
	M_MALFORMED,		/* FORMERR, NOTIMP or dropped */
	M_CACHE_HITS,
	M_CACHE_MISSES,
	M_COALESCED,		/* answered by another client's question */
	M_STALE,		/* served stale (RFC 8767) */
	M_SERVFAIL,		/* no upstream answered */
	M_SHED,			/* failed to make room */
	M__COUNT,
};

extern uint64_t metrics[M__COUNT];

static inline void
metrics_inc(enum metric m)
{
	metrics[m]++;
}

struct resolver;
struct metrics_server;

/*
 * Serve /metrics and /healthz on a for r (borrowed for the server's
 * life).  NULL (logged) when a cannot be bound.
 */
struct metrics_server *metrics_start(struct event_base *base,
	    const struct addr *a, struct resolver *r);

/* NULL is a no-op. */
void	metrics_stop(struct metrics_server *ms);

#endif
