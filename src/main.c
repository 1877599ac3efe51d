#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>

#include "stubborn/config.h"
#include "stubborn/listener.h"
#include "stubborn/log.h"
#include "stubborn/resolver.h"
#include "stubborn/sandbox.h"
#include "stubborn/tls.h"
#include "stubborn/trust.h"

#define EXIT_CHECK_FAILED	1
#define EXIT_USAGE		2
#define PIN_TIMEOUT_SEC		5

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: stubborn [run] [-c FILE] [-f] [-v]\n"
	    "       stubborn check-config [-c FILE]\n"
	    "       stubborn pin URL [--address IP] [--ca-file FILE]\n"
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

static int
parse_run_opts(int argc, char **argv, struct run_opts *o, bool run)
{
	int ch;

	o->conf = STUBBORN_CONF;
	optind = 1;
	while ((ch = getopt(argc, argv, run ? "c:fhv" : "c:h")) != -1) {
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
	if (optind != argc) {
		fprintf(stderr, "stubborn: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		return -1;
	}
	return 0;
}

static int
cmd_check_config(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;

	if (parse_run_opts(argc, argv, &o, false) != 0)
		return EXIT_USAGE;
	if ((cfg = config_load(o.conf, o.conf_given, stderr)) == NULL)
		return EXIT_USAGE;
	config_print(cfg, stdout);
	config_free(cfg);
	return 0;
}

static void
stop_cb(evutil_socket_t sig, short ev, void *arg)
{
	(void)ev;
	log_info("signal %d: shutting down", (int)sig);
	event_base_loopbreak(arg);
}

static void
hup_cb(evutil_socket_t sig, short ev, void *arg)
{
	(void)sig;
	(void)ev;
	(void)arg;
	/* XXX reload lands with issue 6; until then say so, do not die. */
	log_warnx("SIGHUP: reloading is not supported yet; restart stubborn "
	    "to apply a changed conf");
}

static int
cmd_run(int argc, char **argv)
{
	struct run_opts o = { 0 };
	struct config *cfg;
	struct event_base *base;
	struct resolver *r = NULL;
	struct listener *l = NULL;
	struct event *sigs[4] = { NULL };
	int rc = 1;
	size_t i;

	if (parse_run_opts(argc, argv, &o, true) != 0)
		return EXIT_USAGE;
	if ((cfg = config_load(o.conf, o.conf_given, stderr)) == NULL)
		return EXIT_USAGE;
	log_init(1, o.verbose ? LOG_DEBUG : LOG_INFO);
	signal(SIGPIPE, SIG_IGN);
	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	tls_init();
	if ((r = resolver_new(base, cfg)) == NULL) {
		rc = EXIT_USAGE;	/* a trust store that does not load */
		goto done;
	}
	if ((l = listener_new(base, cfg, r)) == NULL)
		goto done;
	if (cfg->user != NULL && sandbox_drop_privileges(cfg->user) != 0)
		goto done;
	if (!o.foreground) {
		if (daemon(0, 0) == -1)
			fatal("daemon");
		log_init(0, o.verbose ? LOG_DEBUG : LOG_INFO);
		if (event_reinit(base) != 0)
			fatalx("event_reinit failed");
	}
	sigs[0] = evsignal_new(base, SIGTERM, stop_cb, base);
	sigs[1] = evsignal_new(base, SIGINT, stop_cb, base);
	sigs[2] = evsignal_new(base, SIGHUP, hup_cb, NULL);
	for (i = 0; i < 3; i++)
		if (sigs[i] == NULL || evsignal_add(sigs[i], NULL) != 0)
			fatalx("cannot install signal handlers");
	log_info("ready: %zu listening sockets, %zu upstreams",
	    listener_count(l), cfg->nupstreams);
	event_base_dispatch(base);
	rc = 0;
done:
	if (l != NULL)
		listener_stop(l);
	resolver_free(r);
	listener_free(l);
	for (i = 0; i < 3; i++)
		if (sigs[i] != NULL)
			event_free(sigs[i]);
	/* Let the deferred frees of closed connections run. */
	event_base_loop(base, EVLOOP_NONBLOCK);
	event_base_loop(base, EVLOOP_NONBLOCK);
	event_base_free(base);
	config_free(cfg);
	return rc;
}

/* A blocking TCP connection to a, or -1 (message printed). */
static int
connect_timeout(const struct addr *a)
{
	struct timeval tv = { PIN_TIMEOUT_SEC, 0 };
	struct pollfd pfd;
	socklen_t elen = sizeof(int);
	int fd, err = 0;

	if ((fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) == -1)
		return -1;
	if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == -1) {
		if (errno != EINPROGRESS)
			goto fail;
		pfd.fd = fd;
		pfd.events = POLLOUT;
		if (poll(&pfd, 1, PIN_TIMEOUT_SEC * 1000) != 1) {
			errno = ETIMEDOUT;
			goto fail;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == -1 ||
		    err != 0) {
			errno = err;
			goto fail;
		}
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == -1)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

static int
resolve_first(const char *host, uint16_t port, struct addr *a)
{
	struct addrinfo hints = { 0 }, *res;
	int e;

	hints.ai_socktype = SOCK_STREAM;
	if ((e = getaddrinfo(host, NULL, &hints, &res)) != 0) {
		fprintf(stderr, "stubborn: %s: %s\n", host, gai_strerror(e));
		return -1;
	}
	memset(a, 0, sizeof(*a));
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	if (a->ss.ss_family == AF_INET)
		((struct sockaddr_in *)&a->ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&a->ss)->sin6_port = htons(port);
	freeaddrinfo(res);
	return 0;
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

static int
cmd_pin(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "address", required_argument, NULL, 'a' },
		{ "ca-file", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct upstream_conf uc = { 0 };
	struct tls_gate gate = { 0 };
	const char *address = NULL, *ca_file = NULL, *err;
	char addrstr[INET6_ADDRSTRLEN + 16];
	struct addr a;
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	int ch, fd = -1, rc = EXIT_USAGE;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			address = optarg;
			break;
		case 'C':
			ca_file = optarg;
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
		usage(stderr);
		return EXIT_USAGE;
	}
	uc.name = "pin";
	if ((err = config_parse_url(argv[optind], &uc)) != NULL) {
		fprintf(stderr, "stubborn: %s: %s\n", argv[optind], err);
		goto done;
	}
	if (address != NULL) {
		if (config_parse_addr(address, uc.port, &a) != 0) {
			fprintf(stderr, "stubborn: bad address '%s'\n",
			    address);
			goto done;
		}
	} else if (resolve_first(uc.host, uc.port, &a) != 0)
		goto done;
	config_addr_str(&a, addrstr, sizeof(addrstr));
	rc = EXIT_CHECK_FAILED;
	tls_init();
	if ((ctx = tls_ctx_new(ca_file)) == NULL ||
	    (ssl = tls_ssl_new(ctx, &uc, &gate)) == NULL)
		goto done;
	if ((fd = connect_timeout(&a)) == -1) {
		fprintf(stderr, "stubborn: %s: %s\n", addrstr, strerror(errno));
		goto done;
	}
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1) {
		if (gate.checked && gate.verdict != TRUST_OK)
			printf("# %s at %s: rejected (%s): %s\n", uc.host,
			    addrstr, trust_verdict_str[gate.verdict],
			    gate.detail);
		else
			log_crypto("TLS handshake failed");
		goto done;
	}
	printf("# %s at %s: chain and hostname verified; CT is not checked "
	    "by this version\n", uc.host, addrstr);
	print_chain_pins(SSL_get0_verified_chain(ssl));
	rc = 0;
done:
	if (ssl != NULL) {
		SSL_shutdown(ssl);
		SSL_free(ssl);
	}
	if (fd != -1)
		close(fd);
	SSL_CTX_free(ctx);
	tls_gate_clear(&gate);
	free(uc.host);
	free(uc.path);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "run";

	log_init(1, LOG_INFO);
	if (argc > 1 && argv[1][0] == '-')
		return cmd_run(argc, argv);
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc > 1 ? argc - 1 : argc,
		    argc > 1 ? argv + 1 : argv);
	if (strcmp(cmd, "check-config") == 0)
		return cmd_check_config(argc - 1, argv + 1);
	if (strcmp(cmd, "pin") == 0)
		return cmd_pin(argc - 1, argv + 1);
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
