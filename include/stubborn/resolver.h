/*
 * A query's life: dispatch to an upstream, deadline, retry on the next
 * upstream, and the answer (or SERVFAIL) back to the client.
 */
#ifndef STUBBORN_RESOLVER_H
#define STUBBORN_RESOLVER_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "stubborn/config.h"
#include "stubborn/dnsmsg.h"
#include "stubborn/listener.h"

struct resolver;

/*
 * cfg and ct_list (NULL: no CT list) are borrowed for the resolver's
 * life.  NULL (logged) on failure.
 */
struct resolver *resolver_new(struct event_base *base,
	    const struct config *cfg, const struct ct_loglist *ct_list);

/* The upstream pool's CT log list from now on (see upstream.h). */
void	resolver_set_ct_list(struct resolver *r,
	    const struct ct_loglist *list);

/*
 * Use cfg's upstreams and trust settings (cfg and ct_list borrowed, as in
 * resolver_new) from now on: a new pool replaces the old one, whose
 * connections all close; questions in flight start over on the new
 * upstreams; the cache stays.  Quarantines carry over by name and URL.
 * Returns 0, or -1 (logged) with nothing changed.
 */
int	resolver_reload(struct resolver *r, const struct config *cfg,
	    const struct ct_loglist *ct_list);

/* The upstream pool (for metrics and health), borrowed. */
struct upstream_pool *resolver_pool(struct resolver *r);

/* Answers held in the cache. */
size_t	resolver_cache_count(const struct resolver *r);

/* Questions still waiting for an answer. */
size_t	resolver_pending(const struct resolver *r);

/* Answer SERVFAIL to every query still waiting, then free r. */
void	resolver_free(struct resolver *r);

/*
 * Resolve the client's query (msg of len bytes, copied; info from
 * dnsmsg_parse_query).  The answer goes to client (copied) later.
 */
void	resolver_query(struct resolver *r, const struct client *client,
	    const uint8_t *msg, size_t len, const struct dnsmsg_info *info);

#endif
