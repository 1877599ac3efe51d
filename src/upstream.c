#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stubborn/dnsmsg.h"
#include "stubborn/log.h"
#include "stubborn/tls.h"
#include "stubborn/denylist.h"
#include "stubborn/sandbox.h"
#include "stubborn/upstream.h"
#include "transport.h"

#define BACKOFF_MAX_SEC		60
/*
 * A query with no other upstream left to ask tries a down one once this
 * much of its backoff is over: with every upstream down, clients get
 * answers within seconds of one's return, and SERVFAIL at once in
 * between, not a handshake (and a wait for a silent server) each.
 */
#define LAST_RESORT_SEC		5
#define FAILURES_DOWN		3	/* in a row mark it down */

const double upstream_rtt_bounds[UPSTREAM_RTT_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.5,
};

const char *const upstream_state_str[] = {
	[UPSTREAM_UP] = "up",
	[UPSTREAM_DOWN] = "down",
	[UPSTREAM_QUARANTINED] = "quarantined",
};

const char *const conn_state_str[] = {
	[CONN_CONNECTING] = "connecting",
	[CONN_READY] = "ready",
	[CONN_CLOSED] = "closed",
};

const char *const conn_outcome_str[] = {
	[CONN_READY_OK] = "ready",
	[CONN_FAILED] = "failed",
	[CONN_INCIDENT] = "trust incident",
	[CONN_REPORT_ONLY] = "trust incident, report only",
	[CONN_CLOSED_IDLE] = "closed",
	[CONN_CLOSED_BUSY] = "closed with queries in flight",
	[CONN_DRAINING] = "draining",
};

TAILQ_HEAD(conn_list, conn);

struct upstream_pool {
	struct conn_list	 conns;		/* every live one */
	struct event_base	*base;
	const struct config	*cfg;
	struct upstream		*ups;
	size_t			 n;
	struct upstream_cbs	 cbs;
	const struct ct_loglist	*ct_list;
	time_t			 ct_warned;	/* last stale or missing warning */
};

uint64_t
upstream_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define QUARANTINE_FILE	"quarantine"

/*
 * Quarantines survive a restart: state-dir/quarantine holds a line per
 * quarantined upstream, "name<TAB>url<TAB>until" (Unix seconds), written
 * whole to a temporary file and renamed over the old one.
 */
static void
quarantine_save(struct upstream_pool *pool)
{
	const char *dir = pool->cfg->state_dir;
	char path[4096], tmp[4200];
	time_t now = time(NULL);
	FILE *fp;
	size_t i;
	int fd;

	if (dir == NULL)
		return;
	snprintf(path, sizeof(path), "%s/%s", sandbox_path(dir),
	    QUARANTINE_FILE);
	snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
	if ((fd = mkstemp(tmp)) == -1 || (fp = fdopen(fd, "w")) == NULL) {
		log_warn("cannot keep quarantines in %s", dir);
		if (fd != -1) {
			close(fd);
			unlink(tmp);
		}
		return;
	}
	for (i = 0; i < pool->n; i++) {
		struct upstream *up = &pool->ups[i];

		if (up->state == UPSTREAM_QUARANTINED &&
		    up->quarantine_until > now)
			fprintf(fp, "%s\t%s\t%lld\n", up->conf->name,
			    up->conf->url, (long long)up->quarantine_until);
	}
	if (fflush(fp) != 0 || fsync(fd) != 0 || fclose(fp) != 0 ||
	    rename(tmp, path) != 0) {
		log_warn("cannot keep quarantines in %s", path);
		unlink(tmp);
	}
}

static void
quarantine_load(struct upstream_pool *pool)
{
	char path[4096], line[1024];
	time_t now = time(NULL);
	const char *why;
	int lineno = 0;
	FILE *fp;

	if (pool->cfg->state_dir == NULL)
		return;
	snprintf(path, sizeof(path), "%s/%s",
	    sandbox_path(pool->cfg->state_dir), QUARANTINE_FILE);
	if ((fp = sandbox_fopen_regular(path, &why)) == NULL) {
		/* Unread, a quarantine would end at every restart: say so. */
		if (errno != ENOENT)
			log_warnx("quarantines in %s: cannot read them (%s), so "
			    "no upstream is kept in quarantine from before", path,
			    why);
		return;		/* none yet */
	}
	while (fgets(line, sizeof(line), fp) != NULL) {
		char *name, *url, *until, *ep, *save = NULL;
		long long t;
		size_t i;

		lineno++;
		name = strtok_r(line, "\t\n", &save);
		url = strtok_r(NULL, "\t\n", &save);
		until = strtok_r(NULL, "\t\n", &save);
		t = until ? strtoll(until, &ep, 10) : 0;
		if (name == NULL || url == NULL || until == NULL || *ep != '\0') {
			/* A damaged file costs the quarantine, never the start. */
			log_warnx("%s:%d: not a quarantine line; ignored", path,
			    lineno);
			continue;
		}
		for (i = 0; i < pool->n; i++) {
			struct upstream *up = &pool->ups[i];

			if (t > now && strcmp(up->conf->name, name) == 0 &&
			    strcmp(up->conf->url, url) == 0) {
				up->state = UPSTREAM_QUARANTINED;
				up->quarantine_until = (time_t)t;
				log_warnx("upstream %s: still quarantined for "
				    "%lld s after a trust incident (%s)", name,
				    t - (long long)now, path);
			}
		}
	}
	fclose(fp);
}

static void	mark_down(struct upstream *, const char *);

/*
 * A down upstream is tried again when its backoff is over, whether or not
 * a query needs it then: a backup behind a healthy first upstream would
 * otherwise stay "down" (in the log, the metrics) long after its return.
 * A handshake that passes the gate marks it up; one that fails backs off
 * further.  Either way the outcome comes through upstream_conn_event.
 */
static void
probe_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct upstream *up = arg;

	(void)fd;
	(void)ev;
	if (up->state != UPSTREAM_DOWN || up->conn != NULL)
		return;		/* back already, or being tried */
	if ((up->conn = up->ops->open(up, up->pool->base)) == NULL)
		mark_down(up, "cannot connect");
}

struct upstream_pool *
upstream_pool_new(struct event_base *base, const struct config *cfg,
    const struct ct_loglist *ct_list, const struct upstream_cbs *cbs)
{
	struct upstream_pool *pool;
	size_t i;

	if ((pool = calloc(1, sizeof(*pool))) == NULL ||
	    (pool->ups = calloc(cfg->nupstreams, sizeof(*pool->ups))) == NULL) {
		free(pool);
		log_warn("%s", __func__);
		return NULL;
	}
	pool->base = base;
	pool->cfg = cfg;
	TAILQ_INIT(&pool->conns);
	pool->cbs = *cbs;
	pool->ct_list = ct_list;
	pool->n = cfg->nupstreams;
	for (i = 0; i < pool->n; i++) {
		struct upstream *up = &pool->ups[i];

		up->pool = pool;
		up->conf = &cfg->upstreams[i];
		up->index = (unsigned)i;
		up->ops = up->conf->proto == PROTO_DOH ? &doh_ops : &dot_ops;
		up->state = UPSTREAM_UP;
		up->quarantine_sec = cfg->quarantine;
		if ((up->probe = evtimer_new(base, probe_cb, up)) == NULL) {
			log_warn("%s", __func__);
			upstream_pool_free(pool);
			return NULL;
		}
		up->ssl_ctx = tls_ctx_new(up->conf->ca_file ? up->conf->ca_file :
		    cfg->ca_file);
		if (up->ssl_ctx == NULL) {
			log_warnx("upstream %s: cannot load its trust store",
			    up->conf->name);
			upstream_pool_free(pool);
			return NULL;
		}
		if (up->conf->npins == 0)
			log_info("upstream %s: no pins configured; the pin "
			    "step is skipped for it", up->conf->name);
	}
	quarantine_load(pool);
	return pool;
}

void
upstream_pool_set_ct_list(struct upstream_pool *pool,
    const struct ct_loglist *list)
{
	pool->ct_list = list;
	pool->ct_warned = 0;
}

void
upstream_pool_carry(struct upstream_pool *pool,
    const struct upstream_pool *old)
{
	size_t i, j;

	for (i = 0; i < pool->n; i++) {
		struct upstream *up = &pool->ups[i];

		for (j = 0; j < old->n; j++) {
			const struct upstream *o = &old->ups[j];

			if (strcmp(o->conf->name, up->conf->name) != 0 ||
			    strcmp(o->conf->url, up->conf->url) != 0)
				continue;
			up->rtt_ms = o->rtt_ms;
			up->stats = o->stats;
			if (o->state == UPSTREAM_QUARANTINED &&
			    up->state != UPSTREAM_QUARANTINED) {
				up->state = UPSTREAM_QUARANTINED;
				up->quarantine_until = o->quarantine_until;
			} else if (o->state == UPSTREAM_DOWN &&
			    up->state == UPSTREAM_UP) {
				/*
				 * Still down, so said until shown otherwise;
				 * but tried at once, a reload being often the
				 * fix.
				 */
				up->state = UPSTREAM_DOWN;
				up->backoff_sec = o->backoff_sec;
				up->retry_at_ms = 0;
				event_active(up->probe, EV_TIMEOUT, 1);
			}
		}
	}
}

size_t
upstream_pool_count(const struct upstream_pool *pool)
{
	return pool->n;
}

struct upstream *
upstream_pool_get(struct upstream_pool *pool, size_t i)
{
	return &pool->ups[i];
}

const struct ct_loglist *
upstream_pool_ct_list(const struct upstream_pool *pool)
{
	return pool->ct_list;
}

static bool	none_up(const struct upstream_pool *);
static bool	usable(struct upstream *, uint64_t, bool);

bool
upstream_pool_healthy(struct upstream_pool *pool)
{
	uint64_t now = upstream_now_ms();
	size_t i;

	if (!none_up(pool))
		return true;
	for (i = 0; i < pool->n; i++) {
		struct upstream *up = &pool->ups[i];

		/* As a query would: every one is down. */
		if (up->conn == NULL && usable(up, now, true))
			up->conn = up->ops->open(up, pool->base);
	}
	return false;
}

void
upstream_conn_add(struct conn *c)
{
	TAILQ_INSERT_TAIL(&c->up->pool->conns, c, pool_entry);
}

void
upstream_conn_remove(struct conn *c)
{
	TAILQ_REMOVE(&c->up->pool->conns, c, pool_entry);
}

void
upstream_pool_drop_denied(struct upstream_pool *pool)
{
	struct conn *c;
	struct pin hit;

	/*
	 * From the head again after each close: failing a conn's queries
	 * over may open or close others.  A closed conn leaves the list, so
	 * this ends.
	 */
again:
	TAILQ_FOREACH(c, &pool->conns, pool_entry) {
		if (c->state != CONN_READY ||
		    denylist_check(c->gate.verified, &hit) < 0)
			continue;
		log_warnx("upstream %s: %s: a key of its certificate chain is "
		    "now on the deny list; closing the connection",
		    c->up->conf->name, c->addrstr);
		c->io->fail(c, c->io->busy(c) ? CONN_CLOSED_BUSY :
		    CONN_CLOSED_IDLE);
		goto again;
	}
}

void
upstream_pool_free(struct upstream_pool *pool)
{
	struct conn *c;
	size_t i;

	if (pool == NULL)
		return;
	/* Draining ones too: each close takes its conn off the list. */
	while ((c = TAILQ_FIRST(&pool->conns)) != NULL)
		c->ops->close(c);
	for (i = 0; i < pool->n; i++) {
		if (pool->ups[i].probe != NULL)
			event_free(pool->ups[i].probe);
		SSL_CTX_free(pool->ups[i].ssl_ctx);
	}
	free(pool->ups);
	free(pool);
}

static bool
none_up(const struct upstream_pool *pool)
{
	size_t i;

	for (i = 0; i < pool->n; i++)
		if (pool->ups[i].state == UPSTREAM_UP)
			return false;
	return true;
}

static bool
usable(struct upstream *up, uint64_t now_ms, bool last_resort)
{
	uint64_t early;

	switch (up->state) {
	case UPSTREAM_UP:
		return true;
	case UPSTREAM_DOWN:
		early = last_resort && up->backoff_sec > LAST_RESORT_SEC ?
		    (up->backoff_sec - LAST_RESORT_SEC) * 1000ULL : 0;
		return now_ms + early >= up->retry_at_ms;
	case UPSTREAM_QUARANTINED:
		if (time(NULL) < up->quarantine_until)
			return false;
		/* Over: it must pass the whole gate on a new connection. */
		log_info("upstream %s: quarantine over", up->conf->name);
		up->state = UPSTREAM_DOWN;
		up->retry_at_ms = 0;
		return true;
	}
	return false;
}

struct upstream *
upstream_pick(struct upstream_pool *pool, uint64_t tried, bool up_only)
{
	uint64_t now = upstream_now_ms();
	struct upstream *best = NULL;
	int pass;
	size_t i;

	/* fastest: the healthy one with the lowest RTT; unmeasured first. */
	if (pool->cfg->strategy == STRATEGY_FASTEST) {
		for (i = 0; i < pool->n; i++) {
			struct upstream *up = &pool->ups[i];

			if (!(tried & ((uint64_t)1 << i)) &&
			    up->state == UPSTREAM_UP &&
			    (best == NULL || up->rtt_ms < best->rtt_ms))
				best = up;
		}
		if (best != NULL)
			return best;
	}
	for (pass = 0; pass < (up_only ? 1 : 2); pass++) {
		for (i = 0; i < pool->n; i++) {
			struct upstream *up = &pool->ups[i];

			if (!(tried & ((uint64_t)1 << i)) && (up_only ?
			    up->state == UPSTREAM_UP : usable(up, now, pass == 1)))
				return up;
		}
	}
	return NULL;
}

#define CT_WARN_EVERY_SEC	3600

void
upstream_gate_init(struct upstream *up, struct tls_gate *gate)
{
	struct upstream_pool *pool = up->pool;
	const struct config *cfg = pool->cfg;
	enum ct_mode mode = up->conf->ct != CT_INHERIT ? up->conf->ct : cfg->ct;
	time_t now = time(NULL);
	long age;

	gate->ct_list = NULL;
	if (mode == CT_OFF)
		return;
	if (pool->ct_list == NULL) {
		if (now - pool->ct_warned >= CT_WARN_EVERY_SEC) {
			log_warnx("no usable CT log list (%s): certificates "
			    "are not checked for CT until one is installed "
			    "(stubborn update-log-list)",
			    cfg->ct_log_list ? cfg->ct_log_list : "none set");
			pool->ct_warned = now;
		}
		return;
	}
	gate->ct_list = pool->ct_list;
	gate->ct_policy = cfg->ct_policy;
	gate->ct_report = mode == CT_REPORT;
	age = (long)(now - pool->ct_list->timestamp_ms / 1000);
	/* A stale list may name retired logs as usable: report, as Chrome. */
	if (age > cfg->ct_max_list_age) {
		gate->ct_report = true;
		if (now - pool->ct_warned >= CT_WARN_EVERY_SEC) {
			log_warnx("CT log list %s is %ld days old (ct-max-list-age "
			    "is %ld days): CT is report-only until it is "
			    "refreshed", cfg->ct_log_list, age / 86400,
			    cfg->ct_max_list_age / 86400);
			pool->ct_warned = now;
		}
	}
}

void
upstream_send(struct upstream *up, struct txq *q)
{
	if (up->conn == NULL &&
	    (up->conn = up->ops->open(up, up->pool->base)) == NULL) {
		up->pool->cbs.failed(up->pool->cbs.arg, q, up, false);
		return;
	}
	up->ops->send(up->conn, q);
}

void
upstream_cancel(struct txq *q)
{
	if (q->conn != NULL)
		q->conn->ops->cancel(q->conn, q);
	else if (q->orphans != NULL) {
		/* Failed with its conn and not yet told: now it never is. */
		TAILQ_REMOVE(q->orphans, q, entry);
		q->orphans = NULL;
	}
}

static void
mark_down(struct upstream *up, const char *why)
{
	struct timeval tv = { 0, 0 };

	up->backoff_sec = up->backoff_sec ? up->backoff_sec * 2 : 1;
	if (up->backoff_sec > BACKOFF_MAX_SEC)
		up->backoff_sec = BACKOFF_MAX_SEC;
	up->retry_at_ms = upstream_now_ms() + up->backoff_sec * 1000ULL;
	tv.tv_sec = up->backoff_sec;
	evtimer_add(up->probe, &tv);
	if (up->state == UPSTREAM_DOWN)
		return;
	up->state = UPSTREAM_DOWN;
	if (up->backoff_sec > LAST_RESORT_SEC && none_up(up->pool))
		log_warnx("upstream %s: down (%s); retry in %u s, or in %d s "
		    "while no upstream is up", up->conf->name, why,
		    up->backoff_sec, LAST_RESORT_SEC);
	else
		log_warnx("upstream %s: down (%s); retry in %u s",
		    up->conf->name, why, up->backoff_sec);
}

void
upstream_note_rtt(struct upstream *up, uint64_t rtt_ms)
{
	size_t i;

	up->stats.answers++;
	up->stats.rtt_count++;
	up->stats.rtt_sum += (double)rtt_ms / 1000;
	for (i = 0; i < UPSTREAM_RTT_BUCKETS; i++)
		if ((double)rtt_ms / 1000 <= upstream_rtt_bounds[i])
			up->stats.rtt_le[i]++;
	if (rtt_ms == 0)
		rtt_ms = 1;	/* 0 means "not measured" */
	if (rtt_ms > 60000)
		rtt_ms = 60000;
	/* EWMA with weight 1/8, as TCP's SRTT (RFC 6298). */
	up->rtt_ms = up->rtt_ms == 0 ? (unsigned)rtt_ms :
	    (unsigned)((7ULL * up->rtt_ms + rtt_ms) / 8);
	/*
	 * Only an answer proves an upstream well: a handshake does not (one
	 * that connects and then says nothing would be retried every second).
	 */
	up->failures = 0;
	up->backoff_sec = 0;
	/* Down for bad answers on a connection that stayed: it answers again. */
	if (up->state == UPSTREAM_DOWN) {
		log_info("upstream %s: up", up->conf->name);
		up->state = UPSTREAM_UP;
	}
}

/* One more failure in a row; FAILURES_DOWN of them mark up down. */
static void
count_failure(struct upstream *up, const char *why)
{
	if (up->state == UPSTREAM_UP && ++up->failures >= FAILURES_DOWN)
		mark_down(up, why);
}

void
upstream_note_failure(struct upstream *up, const char *why)
{
	char buf[160];

	/* Not counted in errors here: upstream_txq_failed counts the query. */
	snprintf(buf, sizeof(buf), "answers fail: %s", why);
	count_failure(up, buf);
}

void
upstream_note_timeout(struct upstream *up, struct txq *q)
{
	struct conn *c;

	up->stats.errors++;
	/* A timeout is a slow answer too, for strategy = fastest. */
	up->rtt_ms = up->rtt_ms ? (up->rtt_ms > 30000 ? 60000 :
	    up->rtt_ms * 2) : 1500;
	/* A down upstream's probe that times out lengthens its backoff. */
	if (up->state == UPSTREAM_DOWN)
		mark_down(up, "queries time out");
	else
		count_failure(up, "queries time out");
	if (up->state != UPSTREAM_DOWN)
		return;
	/*
	 * The connection itself may be wedged (a frame that never ends, a
	 * server that stopped reading): the next probe gets a new one.
	 */
	if ((c = up->conn) != NULL && c->state == CONN_READY) {
		log_info("upstream %s: %s: closing the connection its queries "
		    "timed out on", up->conf->name, c->addrstr);
		/* q's timeout is counted: the close must not fail it again. */
		if (q->conn == c)
			c->ops->cancel(c, q);
		c->io->fail(c, c->io->busy(c) ? CONN_CLOSED_BUSY :
		    CONN_CLOSED_IDLE);
	}
}

void
upstream_conn_event(struct conn *c, enum conn_outcome outcome,
    const char *json)
{
	struct upstream *up = c->up;

	/* Still usable after these two; every other outcome ends its use. */
	if (outcome != CONN_READY_OK && outcome != CONN_REPORT_ONLY &&
	    up->conn == c)
		up->conn = NULL;
	switch (outcome) {
	case CONN_READY_OK:
		up->stats.handshakes++;
		if (up->state != UPSTREAM_UP)
			log_info("upstream %s: up", up->conf->name);
		/* Backoff and failures stand until it answers (note_rtt). */
		up->state = UPSTREAM_UP;
		break;
	case CONN_FAILED:
		mark_down(up, "cannot connect");
		break;
	case CONN_REPORT_ONLY:
		log_incident(json);
		up->stats.incidents[c->gate.verdict]++;
		break;
	case CONN_INCIDENT:
		log_incident(json);
		up->stats.incidents[c->gate.verdict]++;
		up->state = UPSTREAM_QUARANTINED;
		up->quarantine_until = time(NULL) + up->quarantine_sec;
		log_warnx("upstream %s: trust incident; quarantined for %ld s",
		    up->conf->name, up->quarantine_sec);
		quarantine_save(up->pool);
		break;
	case CONN_CLOSED_BUSY:
		/* Reset, hung up on, or broke HTTP/2 with queries in flight. */
		count_failure(up, "connections close with queries in flight");
		break;
	case CONN_DRAINING:
		/*
		 * A GOAWAY that takes none of the queries waiting, on a
		 * connection that answered none: it takes no queries at all.
		 * (One on a connection never asked anything is an idle
		 * server's right.)
		 */
		if (!c->served && c->io->busy(c))
			count_failure(up, "connections refuse queries");
		break;
	case CONN_CLOSED_IDLE:
		break;
	}
}

enum conn_outcome
upstream_gate_outcome(struct tls_gate *gate)
{
	/* The verify hook always runs for a certificate; be sure. */
	if (!gate->checked)
		return CONN_FAILED;
	if (!tls_gate_complete(gate) ||
	    (gate->verdict != TRUST_OK && !gate->report_only))
		return CONN_INCIDENT;
	return gate->report_only ? CONN_REPORT_ONLY : CONN_READY_OK;
}

char *
upstream_incident_json(const struct upstream *up, const char *addrstr,
    const struct tls_gate *gate)
{
	struct trust_incident inc = {
		.upstream = up->conf->name,
		.host = up->conf->host,
		.address = addrstr,
		.verdict = gate->verdict,
		.detail = gate->detail,
		.leaf = gate->leaf,
		.presented = gate->presented,
		.quarantine_sec = up->quarantine_sec,
		.ct = gate->ct_checked ? &gate->ct : NULL,
		.ct_list = gate->ct_list,
		.report_only = gate->report_only,
	};

	return trust_incident_json(&inc);
}

void
upstream_txq_reply(struct conn *c, struct txq *q, uint8_t *msg, size_t len)
{
	struct upstream_pool *pool = c->up->pool;

	/*
	 * REFUSED: that upstream will not serve us (an ACL, a rate limit),
	 * which says nothing of the name.  Not an answer to pass on: the
	 * next upstream's instead, and as many in a row mark it down.  But
	 * a question outside class IN (CHAOS's version.bind, say) is the
	 * client's to ask and the upstream's to refuse: that REFUSED is the
	 * answer, and says nothing of the upstream either.
	 */
	if (dnsmsg_rcode(msg) == DNS_RCODE_REFUSED &&
	    dnsmsg_qclass(q->msg, q->qend) == DNS_CLASS_IN) {
		log_debug("upstream %s: REFUSED", c->up->conf->name);
		upstream_note_failure(c->up, "REFUSED");
		upstream_txq_failed(c, q, CONN_FAILED);
		return;
	}
	/* Its answer, unreadable: the next upstream's instead. */
	if (!pool->cbs.reply(pool->cbs.arg, q, msg, len)) {
		log_debug("upstream %s: a malformed answer of %zu bytes",
		    c->up->conf->name, len);
		upstream_note_failure(c->up, "malformed answer");
		upstream_txq_failed(c, q, CONN_FAILED);
		return;
	}
	c->served = true;
}

void
upstream_txq_failed(struct conn *c, struct txq *q, enum conn_outcome why)
{
	struct upstream_pool *pool = c->up->pool;

	c->up->stats.errors++;
	pool->cbs.failed(pool->cbs.arg, q, c->up, why == CONN_CLOSED_BUSY);
}
