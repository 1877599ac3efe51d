#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "stubborn/ct.h"
#include "stubborn/log.h"
#include "stubborn/denylist.h"
#include "stubborn/metrics.h"
#include "stubborn/resolver.h"
#include "stubborn/trust.h"
#include "stubborn/upstream.h"

uint64_t metrics[M__COUNT];

struct metrics_server {
	struct evhttp	*http;
	struct resolver	*r;
};

/* name, HELP text, the enum metric it reports. */
static const struct {
	const char	*name;
	const char	*help;
	const char	*label;		/* {…} or "" */
	enum metric	 m;
} counters[] = {
	{ "stubborn_queries_total", "Queries from clients, by protocol.",
	    "{protocol=\"udp\"}", M_QUERIES_UDP },
	{ "stubborn_queries_total", NULL, "{protocol=\"tcp\"}",
	    M_QUERIES_TCP },
	{ "stubborn_refused_total", "Queries from clients outside allow.",
	    "", M_REFUSED },
	{ "stubborn_malformed_total", "Queries answered FORMERR or NOTIMP, "
	    "or dropped.", "", M_MALFORMED },
	{ "stubborn_cache_hits_total", "Answers from the cache.", "",
	    M_CACHE_HITS },
	{ "stubborn_cache_misses_total", "Questions not in the cache.", "",
	    M_CACHE_MISSES },
	{ "stubborn_coalesced_total", "Questions that joined an identical "
	    "one in flight.", "", M_COALESCED },
	{ "stubborn_stale_answers_total", "Expired answers served because "
	    "no upstream answered.", "", M_STALE },
	{ "stubborn_servfail_total", "Questions no upstream answered.", "",
	    M_SERVFAIL },
	{ "stubborn_shed_total", "Questions failed to make room for new "
	    "ones.", "", M_SHED },
};

static void
render(struct metrics_server *ms, struct evbuffer *b)
{
	struct upstream_pool *pool = resolver_pool(ms->r);
	const struct ct_loglist *list = upstream_pool_ct_list(pool);
	size_t n = upstream_pool_count(pool), i, j;
	int v, s;

	for (i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		if (counters[i].help != NULL)
			evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s "
			    "counter\n", counters[i].name, counters[i].help,
			    counters[i].name);
		evbuffer_add_printf(b, "%s%s %llu\n", counters[i].name,
		    counters[i].label,
		    (unsigned long long)metrics[counters[i].m]);
	}
	evbuffer_add_printf(b, "# HELP stubborn_cache_entries Answers held "
	    "in the cache.\n# TYPE stubborn_cache_entries gauge\n"
	    "stubborn_cache_entries %zu\n", resolver_cache_count(ms->r));

#define PER_UPSTREAM(mname, help, field)				\
	evbuffer_add_printf(b, "# HELP " mname " " help "\n# TYPE " mname \
	    " counter\n");						\
	for (i = 0; i < n; i++)						\
		evbuffer_add_printf(b, mname "{upstream=\"%s\"} %llu\n",	\
		    upstream_pool_get(pool, i)->conf->name,		\
		    (unsigned long long)upstream_pool_get(pool, i)->stats.field)
	PER_UPSTREAM("stubborn_upstream_queries_total",
	    "Queries sent to the upstream.", queries);
	PER_UPSTREAM("stubborn_upstream_answers_total",
	    "Answers taken from the upstream.", answers);
	PER_UPSTREAM("stubborn_upstream_errors_total",
	    "Queries that failed or timed out there.", errors);
	PER_UPSTREAM("stubborn_upstream_handshakes_total",
	    "Connections whose certificate passed the trust gate.",
	    handshakes);
#undef PER_UPSTREAM

	evbuffer_add_printf(b, "# HELP stubborn_trust_incidents_total "
	    "Certificates the trust gate refused (or reported).\n"
	    "# TYPE stubborn_trust_incidents_total counter\n");
	for (i = 0; i < n; i++)
		for (v = TRUST_FAIL_CHAIN; v < TRUST_VERDICTS; v++)
			evbuffer_add_printf(b, "stubborn_trust_incidents_total"
			    "{upstream=\"%s\",reason=\"%s\"} %llu\n",
			    upstream_pool_get(pool, i)->conf->name,
			    trust_verdict_str[v], (unsigned long long)
			    upstream_pool_get(pool, i)->stats.incidents[v]);

	evbuffer_add_printf(b, "# HELP stubborn_upstream_state 1 for the "
	    "state the upstream is in.\n# TYPE stubborn_upstream_state "
	    "gauge\n");
	for (i = 0; i < n; i++)
		for (s = UPSTREAM_UP; s <= UPSTREAM_QUARANTINED; s++)
			evbuffer_add_printf(b, "stubborn_upstream_state"
			    "{upstream=\"%s\",state=\"%s\"} %d\n",
			    upstream_pool_get(pool, i)->conf->name,
			    upstream_state_str[s],
			    (int)upstream_pool_get(pool, i)->state == s);

	evbuffer_add_printf(b, "# HELP stubborn_upstream_rtt_seconds Time "
	    "from query to answer.\n# TYPE stubborn_upstream_rtt_seconds "
	    "histogram\n");
	for (i = 0; i < n; i++) {
		const struct upstream *up = upstream_pool_get(pool, i);

		for (j = 0; j < UPSTREAM_RTT_BUCKETS; j++)
			evbuffer_add_printf(b, "stubborn_upstream_rtt_seconds_"
			    "bucket{upstream=\"%s\",le=\"%g\"} %llu\n",
			    up->conf->name, upstream_rtt_bounds[j],
			    (unsigned long long)up->stats.rtt_le[j]);
		evbuffer_add_printf(b, "stubborn_upstream_rtt_seconds_bucket"
		    "{upstream=\"%s\",le=\"+Inf\"} %llu\n"
		    "stubborn_upstream_rtt_seconds_sum{upstream=\"%s\"} %.6f\n"
		    "stubborn_upstream_rtt_seconds_count{upstream=\"%s\"} "
		    "%llu\n", up->conf->name,
		    (unsigned long long)up->stats.rtt_count, up->conf->name,
		    up->stats.rtt_sum, up->conf->name,
		    (unsigned long long)up->stats.rtt_count);
	}

	evbuffer_add_printf(b, "# HELP stubborn_ct_log_list_age_seconds Age "
	    "of the CT log list (-1: none).\n# TYPE "
	    "stubborn_ct_log_list_age_seconds gauge\n"
	    "stubborn_ct_log_list_age_seconds %lld\n", list == NULL ? -1LL :
	    (long long)(time(NULL) - list->timestamp_ms / 1000));

	evbuffer_add_printf(b, "# HELP stubborn_denylist_keys Keys on the "
	    "deny list in state-dir.\n# TYPE stubborn_denylist_keys gauge\n"
	    "stubborn_denylist_keys %zu\n"
	    "# HELP stubborn_ct_watch_incidents_total Keys added to the deny "
	    "list while running (ct-watch incidents).\n"
	    "# TYPE stubborn_ct_watch_incidents_total counter\n"
	    "stubborn_ct_watch_incidents_total %llu\n", denylist_count(),
	    (unsigned long long)denylist_added_total());
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	render(arg, b);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; version=0.0.4");
	evhttp_send_reply(req, HTTP_OK, "OK", b);
	evbuffer_free(b);
}

static void
healthz_cb(struct evhttp_request *req, void *arg)
{
	struct metrics_server *ms = arg;
	struct evbuffer *b = evbuffer_new();
	bool ok = upstream_pool_healthy(resolver_pool(ms->r));

	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evbuffer_add_printf(b, ok ? "ok\n" : "no upstream up\n");
	/* Else libevent says text/html. */
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; charset=utf-8");
	evhttp_send_reply(req, ok ? HTTP_OK : 503, ok ? "OK" :
	    "Service Unavailable", b);
	evbuffer_free(b);
}

struct metrics_server *
metrics_start(struct event_base *base, const struct addr *a,
    struct resolver *r)
{
	struct metrics_server *ms = calloc(1, sizeof(*ms));
	char buf[80];
	int fd = -1, one = 1;

	config_addr_str(a, buf, sizeof(buf));
	if (ms == NULL || (ms->http = evhttp_new(base)) == NULL)
		goto fail;
	ms->r = r;
	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) == -1 ||
	    listen(fd, 16) == -1 ||
	    evhttp_accept_socket_with_handle(ms->http, fd) == NULL)
		goto fail;
	evhttp_set_allowed_methods(ms->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_cb(ms->http, "/metrics", metrics_cb, ms);
	evhttp_set_cb(ms->http, "/healthz", healthz_cb, ms);
	evhttp_set_timeout(ms->http, 10);
	log_info("metrics on http://%s/metrics and /healthz", buf);
	return ms;
fail:
	log_err("cannot serve metrics on %s", buf);
	if (fd != -1)
		close(fd);
	if (ms != NULL && ms->http != NULL)
		evhttp_free(ms->http);
	free(ms);
	return NULL;
}

void
metrics_stop(struct metrics_server *ms)
{
	if (ms == NULL)
		return;
	evhttp_free(ms->http);
	free(ms);
}
