#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "stubborn/config.h"
#include "stubborn/ct.h"
#include "stubborn/ctwatch.h"
#include "stubborn/denylist.h"
#include "stubborn/listener.h"
#include "stubborn/log.h"
#include "stubborn/metrics.h"
#include "stubborn/mpool.h"
#include "stubborn/resolver.h"
#include "stubborn/sandbox.h"
#include "stubborn/tls.h"
#include "stubborn/trust.h"
#include "stubborn/upstream.h"

#define EXIT_CHECK_FAILED	1
#define EXIT_USAGE		2
#define PIN_TIMEOUT_SEC		5

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: stubborn [run] [-c FILE] [-f] [-v]\n"
	    "       stubborn check-config [-c FILE]\n"
	    "       stubborn pin URL [--address IP] [--ca-file FILE] [-c FILE]\n"
	    "       stubborn update-log-list [URL] [-c FILE]\n"
	    "       stubborn check-cert --chain PEM --host NAME [--pin P]... "
	    "[--ca-file F]\n"
	    "                  [--log-list F] [--at TIME] "
	    "[--policy chrome|apple]\n"
	    "       stubborn ct-watchlist [-c FILE]\n"
	    "       stubborn ct-hook [-c FILE]\n"
	    "       stubborn version\n"
	    "\n"
	    "  -c FILE  conf file (default %s)\n"
	    "  -f       stay in the foreground and log to stderr\n"
	    "  -v       log debug messages too\n", STUBBORN_CONF);
}

struct run_opts {
	const char	*conf;
	bool		 conf_given;
	bool		 foreground;
	bool		 verbose;
};

/* The common -c/-f/-v options; at most max_args operands may follow. */
static int
parse_run_opts(int argc, char **argv, struct run_opts *o, bool run,
    int max_args)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	o->conf = STUBBORN_CONF;
	optind = 1;
	while ((ch = getopt_long(argc, argv, run ? "c:fhv" : "c:h", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'c':
			o->conf = optarg;
			o->conf_given = true;
			break;
		case 'f':
			o->foreground = true;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (argc - optind > max_args) {
		fprintf(stderr, "stubborn: unexpected argument '%s'\n",
		    argv[optind + max_args]);
		usage(stderr);
		return -1;
	}
	return 0;
}

/*
 * The -c option and the conf of a command that takes nothing else; with
 * env_conf, STUBBORN_CONF stands in for a missing -c.  NULL (reported):
 * exit with EXIT_USAGE.
 */
static struct config *
command_conf(int argc, char **argv, struct run_opts *o, bool env_conf)
{
	if (parse_run_opts(argc, argv, o, false, 0) != 0)
		return NULL;
	if (env_conf && !o->conf_given && getenv("STUBBORN_CONF") != NULL) {
		o->conf = getenv("STUBBORN_CONF");
		o->conf_given = true;
	}
	return config_load(o->conf, o->conf_given, stderr);
}

static bool		 ct_wanted(const struct config *);
static struct ct_loglist *load_ct_list(const struct config *);

/*
 * The user to run as, looked up as run will (before any chroot, which
 * need not hold a passwd file): a name that does not exist is a bad conf.
 */
static bool
user_exists(const struct config *cfg)
{
	const char *path = cfg->path ? cfg->path : "(built-in)";

	errno = 0;
	if (cfg->user == NULL || getpwnam(cfg->user) != NULL)
		return true;
	if (sandbox_lookup_failed(errno))
		fprintf(stderr, "%s:%d: user %s: %s\n", path, cfg->user_line,
		    cfg->user, strerror(errno));
	else
		fprintf(stderr, "%s:%d: user %s does not exist\n", path,
		    cfg->user_line, cfg->user);
	return false;
}

/* One trust store, loaded as the upstreams will; false (said) if it fails. */
static bool
store_loads(const struct config *cfg, const char *ca, int line, FILE *errs)
{
	SSL_CTX *ctx = tls_ctx_new(ca);

	if (ctx != NULL) {
		SSL_CTX_free(ctx);
		return true;
	}
	/* tls_ctx_new said why; the system store needs no line. */
	if (ca != NULL)
		fprintf(errs, "%s:%d: ca-file %s: no certificate loads "
		    "from it\n", cfg->path ? cfg->path : "(built-in)", line, ca);
	return false;
}

/*
 * Every trust store the upstreams use, each once, blamed on the line
 * that named it: run would not start without them.
 */
static bool
trust_stores_load(const struct config *cfg, FILE *errs)
{
	bool ok = true, shared = false;
	size_t i;

	for (i = 0; i < cfg->nupstreams; i++) {
		const struct upstream_conf *uc = &cfg->upstreams[i];

		if (uc->ca_file != NULL)
			ok &= store_loads(cfg, uc->ca_file, uc->ca_file_line,
			    errs);
		else
			shared = true;
	}
	/* [trust] ca-file even when every upstream has its own: pin uses it. */
	if (shared || cfg->ca_file != NULL)
		ok &= store_loads(cfg, cfg->ca_file, cfg->ca_file_line, errs);
	return ok;
}

/*
 * What run would refuse at start is an error here too (a trust store that
 * does not load); what it would run without is a warning (no usable CT
 * log list: no CT check until one is installed).
 */
static int
cmd_check_config(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;
	struct ct_loglist *list;
	int rc = 0;

	if ((cfg = command_conf(argc, argv, &o, false)) == NULL)
		return EXIT_USAGE;
	if (!user_exists(cfg))
		rc = EXIT_USAGE;
	if (!trust_stores_load(cfg, stderr))
		rc = EXIT_USAGE;
	if (ct_wanted(cfg)) {
		if ((list = load_ct_list(cfg)) == NULL)
			log_warnx("no usable CT log list (%s): certificates "
			    "will not be checked for CT until one is installed",
			    cfg->ct_log_list ? cfg->ct_log_list : "none set");
		else if (time(NULL) - list->timestamp_ms / 1000 >
		    cfg->ct_max_list_age)
			log_warnx("CT log list %s is %lld days old (ct-max-list-"
			    "age is %ld days): CT is report-only until it is "
			    "refreshed", cfg->ct_log_list, (long long)
			    ((time(NULL) - list->timestamp_ms / 1000) / 86400),
			    cfg->ct_max_list_age / 86400);
		ct_loglist_free(list);
	}
	if (rc == 0)
		config_print(cfg, stdout);
	config_free(cfg);
	return rc;
}

/* True when some upstream runs the CT step. */
static bool
ct_wanted(const struct config *cfg)
{
	size_t i;

	for (i = 0; i < cfg->nupstreams; i++) {
		enum ct_mode m = cfg->upstreams[i].ct;

		if ((m == CT_INHERIT ? cfg->ct : m) != CT_OFF)
			return true;
	}
	return false;
}

/*
 * The CT log list, or NULL when none is wanted or it cannot be used (then
 * CT is not checked and the pool warns about it hourly).
 */
static struct ct_loglist *
load_ct_list(const struct config *cfg)
{
	struct ct_loglist *list;
	char *errs = NULL, *line, *save = NULL, when[40];
	size_t len;
	FILE *fp;

	if (!ct_wanted(cfg) || cfg->ct_log_list == NULL)
		return NULL;
	if ((fp = open_memstream(&errs, &len)) == NULL)
		fatal("open_memstream");
	list = ct_loglist_load(sandbox_path(cfg->ct_log_list), fp);
	fclose(fp);
	for (line = strtok_r(errs, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warnx("CT log list: %s", line);
	free(errs);
	if (list != NULL)
		log_info("CT log list %s: version %s of %s, %zu logs of %zu "
		    "operators", cfg->ct_log_list,
		    list->version ? list->version : "?",
		    ct_format_time(list->timestamp_ms, when, sizeof(when)),
		    list->nlogs, list->noperators);
	return list;
}

/*
 * The daily refresh from ct-log-list-url: a child runs update-log-list
 * (blocking network I/O stays out of the event loop) and, when it
 * installed a list, the resolver takes it for new connections.  The list
 * it replaces lives on until the next refresh, for handshakes under way.
 */
#define REFRESH_EVERY_SEC	86400
#define REFRESH_SOON_SEC	1	/* no list, or a stale one, at start */

struct refresh {
	const struct config	*cfg;
	struct resolver		*r;
	struct ct_loglist	*cur;
	struct ct_loglist	*prev;
	struct event		*timer;
	bool			 running;
};

static void
refresh_arm(struct refresh *rf, long sec)
{
	struct timeval tv = { sec, 0 };

	evtimer_add(rf->timer, &tv);
}

static void
refresh_done(int st, void *arg)
{
	struct refresh *rf = arg;
	struct ct_loglist *list;

	rf->running = false;
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		log_warnx("CT log list refresh from %s failed; the current "
		    "list stays", rf->cfg->ct_log_list_url);
		return;
	}
	if ((list = load_ct_list(rf->cfg)) == NULL)
		return;
	resolver_set_ct_list(rf->r, list);
	ct_loglist_free(rf->prev);
	rf->prev = rf->cur;
	rf->cur = list;
}

/* The launcher runs it: outside the sandbox, as the configured user. */
static void
refresh_timo(evutil_socket_t fd, short ev, void *arg)
{
	struct refresh *rf = arg;

	(void)fd;
	(void)ev;
	refresh_arm(rf, REFRESH_EVERY_SEC);
	if (rf->running)
		return;		/* the last one is still at it */
	if (sandbox_launch_refresh(refresh_done, rf) != 0)
		log_warnx("CT log list refresh: cannot start it");
	else
		rf->running = true;
}

static int
refresh_start(struct refresh *rf, struct event_base *base)
{
	const struct ct_loglist *l = rf->cur;
	bool soon = l == NULL || time(NULL) - l->timestamp_ms / 1000 >
	    rf->cfg->ct_max_list_age;

	if (rf->cfg->ct_log_list_url == NULL || !ct_wanted(rf->cfg))
		return 0;
	if ((rf->timer = evtimer_new(base, refresh_timo, rf)) == NULL)
		return -1;
	refresh_arm(rf, soon ? REFRESH_SOON_SEC : REFRESH_EVERY_SEC);
	return 0;
}

static void
refresh_stop(struct refresh *rf)
{
	if (rf->timer != NULL)
		event_free(rf->timer);
	ct_loglist_free(rf->prev);
	ct_loglist_free(rf->cur);
}

/* What SIGHUP swaps: the running daemon's parts that hold the conf. */
struct daemon {
	struct run_opts		 opts;
	struct config		*cfg;
	struct config		*boot;	/* sockets, cache, metrics, sandbox */
	struct event_base	*base;
	struct resolver		*r;
	struct listener		*l;
	struct refresh		*rf;
	struct event		*drain;
	struct timeval		 stop_at;
	struct denylist_watch	*deny;
};

/* New keys on the deny list: open connections that use one close. */
static void
deny_changed(size_t added, void *arg)
{
	struct daemon *d = arg;

	if (added > 0)
		log_warnx("deny list: %zu new key%s; open connections are "
		    "checked again", added, added == 1 ? "" : "s");
	upstream_pool_drop_denied(resolver_pool(d->r));
}

static int
deny_start(struct daemon *d)
{
	char path[4096];

	if (d->cfg->state_dir == NULL)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", sandbox_path(d->cfg->state_dir),
	    DENYLIST_FILE);
	d->deny = denylist_watch_start(d->base, path, deny_changed, d);
	return d->deny != NULL ? 0 : -1;
}

/*
 * SIGTERM or SIGINT: stop taking queries, give those in flight up to
 * STOP_GRACE_MS to be answered and written, then leave the loop (what is
 * left gets SERVFAIL).  A second signal leaves at once.
 */
#define STOP_GRACE_MS	900
#define STOP_POLL_MS	20

static void
drain_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct daemon *d = arg;
	struct timeval now, tick = { 0, STOP_POLL_MS * 1000 };

	(void)fd;
	(void)ev;
	event_base_gettimeofday_cached(d->base, &now);
	if ((resolver_pending(d->r) == 0 && !listener_busy(d->l)) ||
	    !timercmp(&now, &d->stop_at, <)) {
		event_base_loopbreak(d->base);
		return;
	}
	evtimer_add(d->drain, &tick);
}

/* certspotter's -watchlist: the upstreams' hostnames. */
static int
cmd_ct_watchlist(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;

	if ((cfg = command_conf(argc, argv, &o, false)) == NULL)
		return EXIT_USAGE;
	ctwatch_print_watchlist(cfg, stdout);
	config_free(cfg);
	return fflush(stdout) == 0 ? 0 : 1;
}

/* certspotter's -script: one event, described by the environment. */
static int
cmd_ct_hook(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;
	int rc;

	/* Run by name with no arguments, the conf may come from the environment. */
	if ((cfg = command_conf(argc, argv, &o, true)) == NULL)
		return EXIT_USAGE;
	/* certspotter keeps the script's output; syslog keeps it too. */
	log_init(LOG_TO_BOTH, o.verbose ? LOG_DEBUG : cfg->log_level);
	tls_init();
	log_set_incident_hook(cfg->on_incident);
	rc = ctwatch_hook(cfg);
	config_free(cfg);
	return rc;
}

/*
 * As PID 1 of a container the daemon inherits every orphan (a detached
 * on-incident hook among them): reap whatever ends.
 */
static void
reap_cb(evutil_socket_t sig, short ev, void *arg)
{
	int st;

	(void)sig;
	(void)ev;
	(void)arg;
	while (waitpid(-1, &st, WNOHANG) > 0)
		;
}

static void
stop_cb(evutil_socket_t sig, short ev, void *arg)
{
	struct daemon *d = arg;
	struct timeval grace = { 0, STOP_GRACE_MS * 1000 };

	(void)ev;
	if (d->drain != NULL) {
		event_base_loopbreak(d->base);
		return;
	}
	log_info("signal %d: shutting down (%zu queries in flight)",
	    (int)sig, resolver_pending(d->r));
	listener_stop(d->l);
	event_base_gettimeofday_cached(d->base, &d->stop_at);
	timeradd(&d->stop_at, &grace, &d->stop_at);
	if ((d->drain = evtimer_new(d->base, drain_cb, d)) == NULL) {
		event_base_loopbreak(d->base);
		return;
	}
	drain_cb(-1, 0, d);
}

static bool
same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) ||
	    (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool
same_listen(const struct config *a, const struct config *b)
{
	return a->nlisten == b->nlisten && memcmp(a->listen, b->listen,
	    a->nlisten * sizeof(*a->listen)) == 0;
}

/*
 * SIGHUP: build the new conf beside the old and swap only when it is
 * whole.  Upstreams, pins, trust and CT settings apply at once (every
 * upstream connection is closed, so the next one meets the new gate);
 * the sockets and the cache stay.
 */
static void
hup_cb(evutil_socket_t sig, short ev, void *arg)
{
	struct daemon *d = arg;
	struct config *cfg;
	struct ct_loglist *list;
	char *errs = NULL, *line, *save = NULL;
	size_t len;
	FILE *fp;

	(void)sig;
	(void)ev;
	if ((fp = open_memstream(&errs, &len)) == NULL)
		return;
	cfg = config_load(d->opts.conf, d->opts.conf_given, fp);
	/* A trust store that loads nothing is the conf's error, by its line. */
	if (cfg != NULL && !trust_stores_load(cfg, fp)) {
		config_free(cfg);
		cfg = NULL;
	}
	fclose(fp);
	for (line = strtok_r(errs, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warnx("reload: %s", line);
	free(errs);
	if (cfg == NULL) {
		log_warnx("reload: %s has errors; the running configuration "
		    "stays", d->opts.conf);
		return;
	}
	/* Against what was set up at start, not the conf read last. */
	if (!same_listen(d->boot, cfg))
		log_warnx("reload: listen changes need a restart; the current "
		    "sockets stay");
	if ((d->boot->metrics == NULL) != (cfg->metrics == NULL) ||
	    (cfg->metrics != NULL && memcmp(d->boot->metrics, cfg->metrics,
	    sizeof(*cfg->metrics)) != 0))
		log_warnx("reload: metrics changes need a restart; the current "
		    "socket stays");
	if (d->boot->cache_size != cfg->cache_size)
		log_warnx("reload: a new cache size needs a restart; the cache "
		    "keeps %ld entries at most", d->boot->cache_size);
	if (!same_str(d->boot->user, cfg->user) ||
	    !same_str(d->boot->chroot, cfg->chroot) ||
	    d->boot->seccomp != cfg->seccomp)
		log_warnx("reload: user, chroot and seccomp changes need a "
		    "restart");
	if (tls_system_store_reload() != 0)
		log_debug("reload: the system trust store read at start stays");
	list = load_ct_list(cfg);
	if (resolver_reload(d->r, cfg, list) != 0) {
		log_warnx("reload: cannot set up the new upstreams; the "
		    "running configuration stays");
		ct_loglist_free(list);
		config_free(cfg);
		return;
	}
	listener_set_config(d->l, cfg);
	log_set_incident_hook(cfg->on_incident);
	if (!d->opts.verbose)
		log_setlevel(cfg->log_level);
	/* No handshake uses the previous list any more: all were closed. */
	ct_loglist_free(d->rf->prev);
	d->rf->prev = d->rf->cur;
	d->rf->cur = list;
	d->rf->cfg = cfg;
	if (d->cfg != d->boot)
		config_free(d->cfg);
	d->cfg = cfg;
	log_info("reloaded %s: %zu upstreams", d->opts.conf,
	    cfg->nupstreams);
}

/* Files the daemon reads again later must be inside its chroot. */
static void
chroot_check(const struct config *cfg, const char *conf)
{
	const char *what[4] = { conf, cfg->state_dir, cfg->ca_file,
	    ct_wanted(cfg) ? cfg->ct_log_list : NULL };
	/* Compared as sandbox_path will map them: to the resolved root. */
	char *root = realpath(cfg->chroot, NULL);
	size_t i;

	if (root == NULL)
		return;		/* sandbox_chroot reports it */
	for (i = 0; i < 4; i++)
		if (what[i] != NULL && !sandbox_path_under(what[i], root))
			log_warnx("%s is outside chroot %s: the daemon "
			    "cannot read it again", what[i], cfg->chroot);
	for (i = 0; i < cfg->nupstreams; i++)
		if (cfg->upstreams[i].ca_file != NULL &&
		    !sandbox_path_under(cfg->upstreams[i].ca_file, root))
			log_warnx("%s is outside chroot %s: the daemon "
			    "cannot read it again",
			    cfg->upstreams[i].ca_file, cfg->chroot);
	free(root);
}

/*
 * Acquire (sockets, files, the launcher), then drop (chroot, user,
 * capabilities), then restrict (seccomp).
 */
static int
sandbox(const struct config *cfg, const struct run_opts *o,
    struct event_base *base)
{
	int rc;

	if (sandbox_launcher_start(base, cfg->user, o->conf,
	    cfg->on_incident) != 0)
		return -1;
	if (cfg->chroot != NULL)
		chroot_check(cfg, o->conf);
	if (sandbox_drop_privileges(cfg->user, cfg->chroot) != 0)
		return -1;
	if (sandbox_drop_capabilities() != 0)
		return -1;
	/* As the user it now runs as; seccomp would not allow the test. */
	if (cfg->state_dir == NULL)
		log_warnx("state-dir is empty: quarantines will not outlast a "
		    "restart, and no deny list is read");
	else if (access(sandbox_path(cfg->state_dir), W_OK | X_OK) != 0)
		log_warnx("state-dir %s is not writable (%s): quarantines "
		    "will not outlast a restart", cfg->state_dir,
		    strerror(errno));
	if (!cfg->seccomp)
		return 0;
	if ((rc = sandbox_seccomp()) == 1)
		log_warnx("seccomp = yes, but this build has no seccomp "
		    "support");
	else if (rc == -1)
		log_errx("not starting without the seccomp filter that "
		    "seccomp = yes asks for (seccomp = no runs without it)");
	return rc == -1 ? -1 : 0;
}

static int
cmd_run(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;
	struct event_base *base;
	struct resolver *r = NULL;
	struct listener *l = NULL;
	struct refresh rf = { 0 };
	struct metrics_server *ms = NULL;
	struct event *sigs[4] = { NULL };
	struct daemon d = { 0 };
	char *conf;
	int rc = 1;
	size_t i;

	if (parse_run_opts(argc, argv, &o, true, 0) != 0)
		return EXIT_USAGE;
	/* Read again on reload, from / or the chroot: absolute. */
	o.conf = conf = config_abspath(o.conf);
	if ((cfg = config_load(o.conf, o.conf_given, stderr)) == NULL) {
		free(conf);
		return EXIT_USAGE;
	}
	if (!user_exists(cfg) || !trust_stores_load(cfg, stderr)) {
		config_free(cfg);
		free(conf);
		return EXIT_USAGE;
	}
	log_init(LOG_TO_STDERR, o.verbose ? LOG_DEBUG : cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	tls_init();
	log_set_incident_hook(cfg->on_incident);
	rf.cfg = cfg;
	rf.cur = load_ct_list(cfg);
	if ((r = resolver_new(base, cfg, rf.cur)) == NULL) {
		rc = EXIT_USAGE;	/* a trust store that does not load */
		goto done;
	}
	if ((l = listener_new(base, cfg, r)) == NULL)
		goto done;
	if (cfg->metrics != NULL &&
	    (ms = metrics_start(base, cfg->metrics, r)) == NULL)
		goto done;
	if (!o.foreground) {
		if (daemon(0, 0) == -1)
			fatal("daemon");
		log_init(LOG_TO_SYSLOG, o.verbose ? LOG_DEBUG : cfg->log_level);
		if (event_reinit(base) != 0)
			fatalx("event_reinit failed");
	}
	if (sandbox(cfg, &o, base) != 0)
		goto done;
	rf.r = r;
	if (refresh_start(&rf, base) != 0)
		fatalx("cannot set up the CT log list refresh");
	d.opts = o;
	d.cfg = cfg;
	d.boot = cfg;
	d.base = base;
	d.r = r;
	d.l = l;
	d.rf = &rf;
	if (deny_start(&d) != 0)
		fatalx("cannot watch the deny list");
	sigs[0] = evsignal_new(base, SIGTERM, stop_cb, &d);
	sigs[1] = evsignal_new(base, SIGINT, stop_cb, &d);
	sigs[2] = evsignal_new(base, SIGHUP, hup_cb, &d);
	sigs[3] = evsignal_new(base, SIGCHLD, reap_cb, NULL);
	for (i = 0; i < 4; i++)
		if (sigs[i] == NULL || evsignal_add(sigs[i], NULL) != 0)
			fatalx("cannot install signal handlers");
	log_info("ready: %zu listening sockets, %zu upstreams",
	    listener_count(l), cfg->nupstreams);
	event_base_dispatch(base);
	cfg = d.cfg;	/* a reload may have replaced it */
	rc = 0;
done:
	if (l != NULL)
		listener_stop(l);
	metrics_stop(ms);
	resolver_free(r);
	/* The SERVFAILs just written to TCP clients leave before they close. */
	event_base_loop(base, EVLOOP_NONBLOCK);
	listener_free(l);
	for (i = 0; i < 4; i++)
		if (sigs[i] != NULL)
			event_free(sigs[i]);
	if (d.drain != NULL)
		event_free(d.drain);
	denylist_watch_stop(d.deny);
	/* Let the deferred frees of closed connections run. */
	event_base_loop(base, EVLOOP_NONBLOCK);
	event_base_loop(base, EVLOOP_NONBLOCK);
	refresh_stop(&rf);
	sandbox_launcher_stop();
	event_base_free(base);
	if (d.boot != cfg)
		config_free(d.boot);
	config_free(cfg);
	free(conf);
	return rc;
}

static void
print_chain_pins(STACK_OF(X509) *chain)
{
	char pin[TRUST_PIN_STR_MAX];
	struct pin p;
	int i;

	for (i = 0; i < sk_X509_num(chain); i++) {
		X509 *x = sk_X509_value(chain, i);
		char *subj = X509_NAME_oneline(X509_get_subject_name(x),
		    NULL, 0);

		if (trust_pin_of_cert(x, &p) != 0) {
			OPENSSL_free(subj);
			continue;
		}
		trust_pin_format(&p, pin, sizeof(pin));
		printf("# depth %d: %s\npin = %s\n", i, subj ? subj : "?", pin);
		OPENSSL_free(subj);
	}
}

/* Print one line per SCT of v, each after prefix. */
static void
print_scts(const char *prefix, const struct ct_loglist *list,
    const struct ct_verdict *v)
{
	char when[40], id[48];
	size_t i;

	for (i = 0; i < v->nscts; i++) {
		const struct ct_sct *s = &v->scts[i];

		EVP_EncodeBlock((unsigned char *)id, s->log_id, CT_LOG_ID_LEN);
		printf("%ssct: source=%s log=\"%s\" log_id=%s "
		    "operator=\"%s\" time=%s status=%s\n", prefix,
		    ct_source_str[s->source],
		    s->log ? s->log->description : "-", id,
		    s->log ? list->operators[ct_log_operator_at(s->log,
		    s->timestamp_ms)] : "-",
		    ct_format_time(s->timestamp_ms, when, sizeof(when)),
		    ct_sct_status_str[s->status]);
	}
}

/*
 * The conf's CT log list for the command line, or NULL (errors on
 * stderr) when there is none to use.
 */
static struct ct_loglist *
cli_ct_list(const struct config *cfg)
{
	if (cfg->ct == CT_OFF || cfg->ct_log_list == NULL ||
	    access(cfg->ct_log_list, F_OK) != 0)
		return NULL;
	return ct_loglist_load(cfg->ct_log_list, stderr);
}

static int
cmd_pin(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "address", required_argument, NULL, 'a' },
		{ "ca-file", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *address = NULL, *ca_file = NULL, *conf = STUBBORN_CONF;
	bool conf_given = false;
	struct tls_client tc;
	struct config *cfg;
	struct ct_loglist *list;
	char err[512];
	int ch, rc;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			address = optarg;
			break;
		case 'C':
			ca_file = optarg;
			break;
		case 'c':
			conf = optarg;
			conf_given = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		if (optind == argc)
			fprintf(stderr, "stubborn: pin needs a URL\n");
		else
			fprintf(stderr, "stubborn: unexpected argument '%s'\n",
			    argv[optind + 1]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if ((cfg = config_load(conf, conf_given, stderr)) == NULL)
		return EXIT_USAGE;
	list = cli_ct_list(cfg);
	tls_init();
	rc = tls_client_open(&tc, argv[optind], address,
	    ca_file ? ca_file : cfg->ca_file, list, cfg->ct_policy, err,
	    sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "stubborn: %s\n", err);
		rc = rc == -2 ? EXIT_USAGE : EXIT_CHECK_FAILED;
		goto done;
	}
	printf("# %s at %s: chain and hostname verified\n", tc.uc.host,
	    tc.addrstr);
	print_chain_pins(SSL_get0_verified_chain(tc.ssl));
	if (list == NULL)
		printf("# ct: skipped (%s)\n", cfg->ct == CT_OFF ?
		    "ct = off in the conf" : "no CT log list in the conf");
	else {
		/* Comments, so the output can still be pasted into a conf. */
		print_scts("# ", list, &tc.gate.ct);
		printf("# ct: %s (%s)\n", tc.gate.report_only ? "FAIL" : "ok",
		    tc.gate.report_only ? tc.gate.detail : tc.gate.ct.why);
		/*
		 * The pins are printed either way, but a gate enforcing CT
		 * would refuse this chain: a check failed.  (Not with a
		 * stale list, which makes the daemon's CT report-only.)
		 */
		if (tc.gate.report_only && cfg->ct == CT_ENFORCE &&
		    time(NULL) - list->timestamp_ms / 1000 <=
		    cfg->ct_max_list_age)
			rc = EXIT_CHECK_FAILED;
	}
done:
	tls_client_close(&tc);
	ct_loglist_free(list);
	config_free(cfg);
	return rc;
}

static int
cmd_update_log_list(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;
	struct tls_client tc;
	struct ct_loglist *cur;
	const char *url;
	char err[512] = "", *body = NULL;
	int64_t installed_ms = 0, served_ms = 0;
	size_t len = 0;
	FILE *quiet;
	int rc;

	if (parse_run_opts(argc, argv, &o, false, 1) != 0)
		return EXIT_USAGE;
	if ((cfg = config_load(o.conf, o.conf_given, stderr)) == NULL)
		return EXIT_USAGE;
	url = optind < argc ? argv[optind] : cfg->ct_log_list_url;
	if (url == NULL || cfg->ct_log_list == NULL) {
		fprintf(stderr, "stubborn: update-log-list needs a URL (or "
		    "ct-log-list-url) and ct-log-list in the conf\n");
		config_free(cfg);
		return EXIT_USAGE;
	}
	if (strncmp(url, "https://", 8) != 0) {
		fprintf(stderr, "stubborn: %s: the list is fetched over "
		    "https:// only\n", url);
		config_free(cfg);
		return EXIT_USAGE;
	}
	tls_init();
	/* The system store vouches for the list's server, never ca-file. */
	rc = tls_client_open(&tc, url, NULL, NULL, NULL, CT_POLICY_CHROME, err,
	    sizeof(err));
	if (rc == 0 && tls_client_get(&tc, CT_LIST_MAX_BYTES, &body, &len,
	    &served_ms, err, sizeof(err)) != 0)
		rc = -1;
	/*
	 * No going back past the list in place (unless it is unreadable);
	 * one without a date of its own has its Last-Modified as the file's.
	 */
	if (rc == 0 && (quiet = fopen("/dev/null", "w")) != NULL) {
		cur = ct_loglist_load(cfg->ct_log_list, quiet);
		if (cur != NULL)
			installed_ms = cur->timestamp_ms;
		ct_loglist_free(cur);
		fclose(quiet);
	}
	if (rc == 0 && ct_loglist_install(cfg->ct_log_list, body, len, url,
	    served_ms, installed_ms, cfg->ct_max_list_age, stdout,
	    stderr) != 0)
		rc = -1;
	if (rc != 0) {
		if (body == NULL)
			fprintf(stderr, "stubborn: %s\n", err);
		fprintf(stderr, "stubborn: %s left as it was\n",
		    cfg->ct_log_list);
		rc = rc == -2 ? EXIT_USAGE : EXIT_CHECK_FAILED;
	}
	free(body);
	tls_client_close(&tc);
	config_free(cfg);
	return rc;
}

/* Unix seconds or RFC 3339, as ms. */
static int
parse_time_arg(const char *s, int64_t *ms)
{
	char *ep;
	long long v;

	if (ct_parse_rfc3339(s, ms) == 0)
		return 0;
	if (!isdigit((unsigned char)s[0]))
		return -1;	/* strtoll would take blanks and signs */
	errno = 0;
	v = strtoll(s, &ep, 10);
	/* Up to the end of year 9999, the last a certificate can name. */
	if (errno || ep == s || *ep != '\0' || v < 0 || v > 253402300799LL)
		return -1;
	*ms = (int64_t)v * 1000;
	return 0;
}

static STACK_OF(X509) *
read_chain(const char *path)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	const char *why = "out of memory";
	FILE *fp = sandbox_fopen_regular(path, &why);
	X509 *x;

	if (fp == NULL || chain == NULL) {
		fprintf(stderr, "stubborn: %s: %s\n", path, why);
		if (fp)
			fclose(fp);
		sk_X509_free(chain);
		return NULL;
	}
	while ((x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL)
		sk_X509_push(chain, x);
	fclose(fp);
	/* End of file ends the loop too; only a partial block is an error. */
	if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE ||
	    sk_X509_num(chain) == 0) {
		fprintf(stderr, "stubborn: %s: not a PEM certificate chain\n",
		    path);
		sk_X509_pop_free(chain, X509_free);
		chain = NULL;
	}
	ERR_clear_error();
	return chain;
}

static char *
name_line(X509 *x)
{
	return X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
}

/*
 * The chain's verification as a handshake sets it up: server purpose,
 * the time, the TLS security level (weak keys, SHA-1) and, when given,
 * the host (so a wrong name is found before an expired certificate, as
 * there).  NULL when out of memory.
 */
static X509_STORE_CTX *
verify_ctx(X509_STORE *store, STACK_OF(X509) *chain, int64_t at_ms,
    int level, const char *host)
{
	X509_STORE_CTX *xctx = X509_STORE_CTX_new();
	X509_VERIFY_PARAM *param;

	if (xctx == NULL || X509_STORE_CTX_init(xctx, store,
	    sk_X509_value(chain, 0), chain) != 1) {
		X509_STORE_CTX_free(xctx);
		return NULL;
	}
	X509_STORE_CTX_set_default(xctx, "ssl_server");
	param = X509_STORE_CTX_get0_param(xctx);
	X509_VERIFY_PARAM_set_time(param, (time_t)(at_ms / 1000));
	X509_VERIFY_PARAM_set_auth_level(param, level);
	X509_VERIFY_PARAM_set_hostflags(param,
	    X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	    X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	if (host != NULL && X509_VERIFY_PARAM_set1_host(param, host, 0) != 1) {
		X509_STORE_CTX_free(xctx);
		return NULL;
	}
	return xctx;
}

static int
cmd_check_cert(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "chain", required_argument, NULL, 'c' },
		{ "host", required_argument, NULL, 'H' },
		{ "pin", required_argument, NULL, 'p' },
		{ "ca-file", required_argument, NULL, 'C' },
		{ "log-list", required_argument, NULL, 'l' },
		{ "at", required_argument, NULL, 'a' },
		{ "policy", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *chain_path = NULL, *host = NULL, *ca_file = NULL;
	const char *list_path = NULL, *failed = NULL;
	struct pin *pins = NULL;
	size_t npins = 0;
	enum ct_policy policy = CT_POLICY_CHROME;
	int64_t at_ms = -1;
	STACK_OF(X509) *chain = NULL, *verified = NULL;
	struct ct_loglist *list = NULL;
	struct ct_verdict *v = NULL;
	X509_STORE *store = NULL;
	X509_STORE_CTX *xctx = NULL;
	X509 *leaf, *issuer = NULL;
	STACK_OF(SCT) *scts = NULL;
	SSL_CTX *sslctx = NULL;
	char *subj, *hostbuf = NULL;
	int ch, rc = EXIT_USAGE, err, level, gate_err = X509_V_OK;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			chain_path = optarg;
			break;
		case 'H':
			host = optarg;
			break;
		case 'p': {
			struct pin *np = reallocarray(pins, npins + 1,
			    sizeof(*pins));

			if (np == NULL)
				goto done;
			pins = np;
			if (trust_pin_parse(optarg, &pins[npins]) != 0) {
				fprintf(stderr, "stubborn: bad pin '%s' "
				    "(expected sha256/<base64>)\n", optarg);
				goto done;
			}
			npins++;
			break;
		}
		case 'C':
			ca_file = optarg;
			break;
		case 'l':
			list_path = optarg;
			break;
		case 'a':
			if (parse_time_arg(optarg, &at_ms) != 0) {
				fprintf(stderr, "stubborn: bad time '%s' "
				    "(Unix seconds or RFC 3339)\n", optarg);
				goto done;
			}
			break;
		case 'P':
			if (strcmp(optarg, "chrome") == 0)
				policy = CT_POLICY_CHROME;
			else if (strcmp(optarg, "apple") == 0)
				policy = CT_POLICY_APPLE;
			else {
				fprintf(stderr, "stubborn: policy must be "
				    "chrome or apple\n");
				goto done;
			}
			break;
		case 'h':
			usage(stdout);
			rc = 0;
			goto done;
		default:
			usage(stderr);
			goto done;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "stubborn: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		goto done;
	}
	if (chain_path == NULL || host == NULL || *host == '\0') {
		fprintf(stderr, "stubborn: check-cert needs --chain and "
		    "--host\n");
		goto done;
	}
	/* As in a conf url: one trailing dot names the same host. */
	if ((hostbuf = strdup(host)) == NULL)
		goto done;
	if (strlen(hostbuf) > 1 && hostbuf[strlen(hostbuf) - 1] == '.')
		hostbuf[strlen(hostbuf) - 1] = '\0';
	if (hostbuf[strlen(hostbuf) - 1] == '.') {
		fprintf(stderr, "stubborn: bad host '%s'\n", host);
		goto done;
	}
	host = hostbuf;
	if ((chain = read_chain(chain_path)) == NULL)
		goto done;
	if (list_path != NULL &&
	    (list = ct_loglist_load(list_path, stderr)) == NULL)
		goto done;
	if (at_ms < 0)
		at_ms = (int64_t)time(NULL) * 1000;
	leaf = sk_X509_value(chain, 0);

	/* Step 1: the chain, to the system store or ca-file alone. */
	if ((store = X509_STORE_new()) == NULL)
		goto done;
	if (tls_store_load(store, ca_file) != 0) {
		log_crypto_err(ca_file ? ca_file : "the system trust store");
		goto done;
	}
	/* The TLS security level the daemon's handshakes would apply. */
	if ((sslctx = SSL_CTX_new(TLS_client_method())) == NULL)
		goto done;
	level = SSL_CTX_get_security_level(sslctx);
	/* The handshake's own verification, whose first failure names it. */
	if ((xctx = verify_ctx(store, chain, at_ms, level, host)) == NULL)
		goto done;
	gate_err = X509_verify_cert(xctx) == 1 ? X509_V_OK :
	    X509_STORE_CTX_get_error(xctx);
	X509_STORE_CTX_free(xctx);
	ERR_clear_error();
	/* The chain alone, for its own line. */
	if ((xctx = verify_ctx(store, chain, at_ms, level, NULL)) == NULL)
		goto done;
	rc = EXIT_CHECK_FAILED;
	subj = name_line(leaf);
	printf("certificate: %s\n", subj ? subj : "?");
	OPENSSL_free(subj);
	if (X509_verify_cert(xctx) == 1) {
		verified = X509_STORE_CTX_get1_chain(xctx);
		subj = name_line(sk_X509_value(verified,
		    sk_X509_num(verified) - 1));
		printf("chain: ok (verified to %s)\n", subj ? subj : "?");
		OPENSSL_free(subj);
	} else {
		err = X509_STORE_CTX_get_error(xctx);
		printf("chain: FAIL (depth %d: %s)\n",
		    X509_STORE_CTX_get_error_depth(xctx),
		    X509_verify_cert_error_string(err));
	}
	ERR_clear_error();
	if (gate_err != X509_V_OK)
		failed = gate_err == X509_V_ERR_HOSTNAME_MISMATCH ?
		    "hostname" : "chain";
	else if (verified == NULL)
		failed = "chain";

	/* Step 2: a DNS SAN for the host; never the CN, never an IP SAN. */
	if (X509_check_host(leaf, host, 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT |
	    X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1)
		printf("hostname: ok (%s)\n", host);
	else {
		printf("hostname: FAIL (no DNS name of the certificate "
		    "matches %s)\n", host);
		if (failed == NULL)
			failed = "hostname";
	}

	/* Step 3: pins, on the verified chain only. */
	if (npins == 0)
		printf("pin: skipped (no pins)\n");
	else if (verified == NULL) {
		printf("pin: FAIL (no verified chain to match pins against)\n");
		if (failed == NULL)
			failed = "pin";
	} else if (trust_check_pins(verified, pins, npins) == TRUST_OK)
		printf("pin: ok (a key of the verified chain is pinned)\n");
	else {
		printf("pin: FAIL (no key of the verified chain is in the pin "
		    "set of %zu)\n", npins);
		if (failed == NULL)
			failed = "pin";
	}

	/* Step 4: CT, with the embedded SCTs (offline there are no others). */
	if (list == NULL)
		printf("ct: skipped (no --log-list)\n");
	else {
		if (verified != NULL && sk_X509_num(verified) > 1)
			issuer = sk_X509_value(verified, 1);
		else if (sk_X509_num(chain) > 1)
			issuer = sk_X509_value(chain, 1);
		scts = ct_embedded_scts(leaf);
		if ((v = calloc(1, sizeof(*v))) == NULL)
			goto done;
		ct_evaluate(list, policy, leaf, issuer, scts, at_ms, v);
		print_scts("", list, v);
		printf("ct: %s (%s)\n", v->compliant ? "ok" : "FAIL", v->why);
		if (!v->compliant && failed == NULL)
			failed = "ct";
	}
	if (failed == NULL) {
		printf("verdict: trusted\n");
		rc = 0;
	} else
		printf("verdict: rejected (%s)\n", failed);
done:
	SCT_LIST_free(scts);
	free(v);
	free(pins);
	free(hostbuf);
	SSL_CTX_free(sslctx);
	ct_loglist_free(list);
	X509_STORE_CTX_free(xctx);
	X509_STORE_free(store);
	sk_X509_pop_free(verified, X509_free);
	sk_X509_pop_free(chain, X509_free);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "run";
	const char *self = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 :
	    argv[0];

	/* Before OpenSSL allocates; if it had, it just keeps using malloc. */
	(void)mpool_openssl();
	log_init(LOG_TO_STDERR, LOG_INFO);
	/* certspotter runs a -script without arguments: this name is ct-hook. */
	if (strcmp(self, "stubborn-ct-hook") == 0)
		return cmd_ct_hook(argc, argv);
	/* What users of other tools type first. */
	if (strcmp(cmd, "--help") == 0)
		cmd = "help";
	else if (strcmp(cmd, "--version") == 0)
		cmd = "version";
	else if (argc > 1 && argv[1][0] == '-')
		return cmd_run(argc, argv);
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc > 1 ? argc - 1 : argc,
		    argc > 1 ? argv + 1 : argv);
	if (strcmp(cmd, "check-config") == 0)
		return cmd_check_config(argc - 1, argv + 1);
	if (strcmp(cmd, "pin") == 0)
		return cmd_pin(argc - 1, argv + 1);
	if (strcmp(cmd, "check-cert") == 0)
		return cmd_check_cert(argc - 1, argv + 1);
	if (strcmp(cmd, "update-log-list") == 0)
		return cmd_update_log_list(argc - 1, argv + 1);
	if (strcmp(cmd, "ct-watchlist") == 0)
		return cmd_ct_watchlist(argc - 1, argv + 1);
	if (strcmp(cmd, "ct-hook") == 0)
		return cmd_ct_hook(argc - 1, argv + 1);
	if ((strcmp(cmd, "version") == 0 || strcmp(cmd, "help") == 0) &&
	    argc == 3 && (strcmp(argv[2], "--help") == 0 ||
	    strcmp(argv[2], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if ((strcmp(cmd, "version") == 0 || strcmp(cmd, "help") == 0) &&
	    argc > 2) {
		fprintf(stderr, "stubborn: unexpected argument '%s'\n",
		    argv[2]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "version") == 0) {
		printf("stubborn %s\n", PACKAGE_VERSION);
		return 0;
	}
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "stubborn: unknown command '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}
