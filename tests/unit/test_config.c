/* Conf parsing: values, defaults, and file:line errors. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "stubborn/config.h"

/* Load a file from tests/data; *errs gets what config_load wrote. */
static struct config *
load(const char *name, char **errs)
{
	char path[512];
	size_t len;
	FILE *fp = open_memstream(errs, &len);
	struct config *cfg;

	assert_non_null(fp);
	snprintf(path, sizeof(path), "%s/%s", TEST_DATA, name);
	cfg = config_load(path, true, fp);
	fclose(fp);
	return cfg;
}

static uint16_t
port_of(const struct addr *a)
{
	return ntohs(a->ss.ss_family == AF_INET ?
	    ((const struct sockaddr_in *)&a->ss)->sin_port :
	    ((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

static void
addr_parsing(void **state)
{
	static const char *const bad[] = {
		"", "1.2.3", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
		"127.0.0.1:53x", "[::1", "[::1]x", "[::1]:", "host:53",
		"localhost", "::1:53:", "[127.0.0.1]:53x",
	};
	struct addr a;
	char buf[64];

	(void)state;
	assert_int_equal(config_parse_addr("127.0.0.1", 53, &a), 0);
	assert_int_equal(a.ss.ss_family, AF_INET);
	assert_string_equal(config_addr_str(&a, buf, sizeof(buf)),
	    "127.0.0.1:53");
	assert_int_equal(config_parse_addr("10.0.0.1:5353", 53, &a), 0);
	assert_int_equal(port_of(&a), 5353);
	assert_int_equal(config_parse_addr("[::1]:853", 53, &a), 0);
	assert_int_equal(a.ss.ss_family, AF_INET6);
	assert_string_equal(config_addr_str(&a, buf, sizeof(buf)),
	    "[::1]:853");
	assert_int_equal(config_parse_addr("2001:db8::1", 53, &a), 0);
	assert_int_equal(port_of(&a), 53);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (config_parse_addr(bad[i], 53, &a) == 0)
			fail_msg("accepted bad address '%s'", bad[i]);
}

static bool
matches(const char *net, const char *ip)
{
	struct cidr c;
	struct addr a;

	assert_int_equal(config_parse_cidr(net, &c), 0);
	assert_int_equal(config_parse_addr(ip, 53, &a), 0);
	return config_cidr_match(&c, (struct sockaddr *)&a.ss);
}

static void
cidr_parsing(void **state)
{
	struct cidr c;

	(void)state;
	assert_true(matches("127.0.0.0/8", "127.1.2.3"));
	assert_false(matches("127.0.0.0/8", "128.0.0.1"));
	assert_true(matches("10.1.2.3/8", "10.200.0.1"));	/* masked */
	assert_true(matches("192.0.2.1", "192.0.2.1"));
	assert_false(matches("192.0.2.1", "192.0.2.2"));
	assert_true(matches("192.0.2.0/25", "192.0.2.127"));
	assert_false(matches("192.0.2.0/25", "192.0.2.128"));
	assert_true(matches("0.0.0.0/0", "203.0.113.9"));
	assert_true(matches("::1/128", "::1"));
	assert_false(matches("::1/128", "::2"));
	assert_true(matches("2001:db8::/32", "2001:db8:ffff::1"));
	assert_false(matches("::1/128", "127.0.0.1"));
	assert_false(matches("127.0.0.0/8", "::1"));
	/* A v4-mapped client is judged by its IPv4 address. */
	assert_true(matches("127.0.0.0/8", "::ffff:127.0.0.1"));
	assert_int_equal(config_parse_cidr("127.0.0.0/33", &c), -1);
	assert_int_equal(config_parse_cidr("::/129", &c), -1);
	assert_int_equal(config_parse_cidr("127.0.0.0/", &c), -1);
	assert_int_equal(config_parse_cidr("/8", &c), -1);
	assert_int_equal(config_parse_cidr("127.0.0.0/-1", &c), -1);
}

static void
url_parsing(void **state)
{
	static const char *const bad[] = {
		"dns.test", "udp://dns.test", "tls://", "tls://:853",
		"tls://192.0.2.1", "tls://192.0.2.1:853", "tls://[::1]:853",
		"tls://dns.test:0", "tls://dns.test:70000", "tls://dns.test:x",
		"tls://dns.test/path", "tls://a..b", "tls://dns_test",
		"tls://user@dns.test", "https://dns.test/q?x=1",
		"tls://-.test.", "tls://.", "tls://dns.test..:853",
	};
	struct upstream_conf uc;

	(void)state;
	memset(&uc, 0, sizeof(uc));
	assert_null(config_parse_url("tls://DNS.Test.:8853", &uc));
	assert_int_equal(uc.proto, PROTO_DOT);
	assert_string_equal(uc.host, "dns.test");
	assert_int_equal(uc.port, 8853);
	assert_null(uc.path);
	assert_null(config_parse_url("tls://dns.test", &uc));
	assert_int_equal(uc.port, 853);
	assert_null(config_parse_url("https://cloudflare-dns.com", &uc));
	assert_int_equal(uc.proto, PROTO_DOH);
	assert_int_equal(uc.port, 443);
	assert_string_equal(uc.path, "/dns-query");
	assert_null(config_parse_url("https://dns.test:8443/q", &uc));
	assert_int_equal(uc.port, 8443);
	assert_string_equal(uc.path, "/q");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (config_parse_url(bad[i], &uc) == NULL)
			fail_msg("accepted bad url '%s'", bad[i]);
	free(uc.host);
	free(uc.path);
}

static void
good_file(void **state)
{
	char *errs = NULL, buf[64];
	struct config *cfg = load("good.conf", &errs);

	(void)state;
	assert_non_null(cfg);
	assert_string_equal(errs, "");
	assert_int_equal(cfg->nlisten, 3);
	assert_string_equal(config_addr_str(&cfg->listen[1], buf, sizeof(buf)),
	    "[::1]:5353");
	assert_string_equal(config_addr_str(&cfg->listen[2], buf, sizeof(buf)),
	    "127.0.0.2:53");
	assert_int_equal(cfg->nallow, 3);
	assert_int_equal(cfg->quarantine, 7200);
	assert_int_equal(cfg->nupstreams, 2);
	assert_string_equal(cfg->upstreams[0].name, "first");
	assert_string_equal(cfg->upstreams[0].host, "dns.test");
	assert_int_equal(cfg->upstreams[0].port, 8853);
	assert_int_equal(cfg->upstreams[0].naddrs, 2);
	/* The port comes from the URL unless the address names one. */
	assert_string_equal(config_addr_str(&cfg->upstreams[0].addrs[0], buf,
	    sizeof(buf)), "127.0.0.2:8853");
	assert_string_equal(config_addr_str(&cfg->upstreams[0].addrs[1], buf,
	    sizeof(buf)), "[::1]:9853");
	assert_int_equal(cfg->upstreams[0].npins, 2);
	assert_string_equal(cfg->upstreams[1].name, "second");
	assert_int_equal(cfg->upstreams[1].port, 853);
	assert_int_equal(cfg->upstreams[1].npins, 0);
	assert_string_equal(config_addr_str(&cfg->upstreams[1].addrs[0], buf,
	    sizeof(buf)), "127.0.0.3:853");
	config_free(cfg);
	free(errs);
}

static void
defaults(void **state)
{
	char *errs = NULL;
	size_t len;
	FILE *fp = open_memstream(&errs, &len);
	struct config *cfg;

	(void)state;
	/* No file: the built-in defaults, with public upstreams by name. */
	cfg = config_load(TEST_DATA "/does-not-exist.conf", false, fp);
	fflush(fp);
	assert_non_null(cfg);
	assert_int_equal(cfg->nlisten, 2);
	assert_true(cfg->seccomp);
	assert_int_equal(cfg->log_level, LOG_INFO);
	assert_null(cfg->chroot);
	assert_int_equal(cfg->nallow, 2);
	assert_int_equal(cfg->quarantine, 3600);
	assert_true(cfg->nupstreams >= 2);
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		assert_non_null(cfg->upstreams[i].host);
		assert_true(cfg->upstreams[i].naddrs > 0);
	}
	config_free(cfg);
	/* ...unless the file was named on the command line. */
	cfg = config_load(TEST_DATA "/does-not-exist.conf", true, fp);
	fclose(fp);
	assert_null(cfg);
	assert_non_null(strstr(errs, "does-not-exist.conf: No such file"));
	free(errs);
}

/* file must be rejected with "file:line: want" among the errors. */
static void
rejects(const char *file, int line, const char *want)
{
	char *errs = NULL, prefix[600];
	struct config *cfg = load(file, &errs);

	if (cfg != NULL)
		fail_msg("%s was accepted", file);
	snprintf(prefix, sizeof(prefix), "%s/%s:%d: ", TEST_DATA, file, line);
	if (strstr(errs, prefix) == NULL || strstr(errs, want) == NULL)
		fail_msg("%s: want '%s' ... '%s' in:\n%s", file, prefix, want,
		    errs);
	free(errs);
}

static void
bad_files(void **state)
{
	(void)state;
	rejects("bad-key.conf", 5, "unknown key 'colour' in [trust]");
	rejects("bad-listen.conf", 3, "bad listen address '127.0.0.1:99999'");
	rejects("bad-pin.conf", 4, "bad pin 'sha256/not-a-pin'");
	rejects("bad-url.conf", 3, "URL needs a hostname");
	/* Every error of a file is reported, each with its own line. */
	rejects("bad-many.conf", 2, "bad network '127.0.0.0/33'");
	rejects("bad-many.conf", 4, "'many' is not a non-negative number");
	rejects("bad-many.conf", 6, "URL has no hostname");
	rejects("bad-many.conf", 8, "'url' given twice in [upstream]");
	rejects("bad-many.conf", 9, "[upstream] needs a name");
	rejects("bad-many.conf", 11, "bad address 'localhost'");
	rejects("bad-many.conf", 12, "syntax error");
	rejects("bad-many.conf", 10, "upstream 'b' has no url");
	rejects("bad-sandbox.conf", 2, "seccomp must be yes or no, not 'maybe'");
	rejects("bad-sandbox.conf", 3, "log-level must be error, warning, "
	    "notice, info or debug, not 'loud'");
	rejects("bad-sandbox.conf", 4,
	    "chroot must be an absolute path, not 'var/empty'");
	rejects("bad-range.conf", 2, "'10000001' is above 10000000");
	rejects("bad-range.conf", 3, "'2147483648' is above 2147483647");
	rejects("bad-range.conf", 4, "'70000d' is above 2147483647");
	/* It would overflow the clock: no quarantine at all. */
	rejects("bad-quarantine.conf", 2, "is above 3153600000");
	/* 0 would turn the quarantine, or CT, off without saying so. */
	rejects("bad-zero.conf", 2, "'0' must be more than 0: an upstream "
	    "that fails the gate would be tried again at the next query");
	rejects("bad-zero.conf", 3, "'0d' must be more than 0: every list "
	    "would be stale, and CT report-only for good");
	/* An indented line is not the value before it, going on. */
	rejects("bad-indent.conf", 4, "syntax error");
}

/* A bad url or address is one error, not also a missing one. */
static void
no_cascade(void **state)
{
	char *errs = NULL;
	struct config *cfg;

	(void)state;
	cfg = load("bad-url.conf", &errs);
	assert_null(cfg);
	assert_non_null(strstr(errs, "bad-url.conf:3: "));
	assert_null(strstr(errs, "has no url"));
	free(errs);
	errs = NULL;
	cfg = load("bad-many.conf", &errs);
	assert_null(cfg);
	/* b's address was bad; a url it never had. */
	assert_non_null(strstr(errs, "upstream 'b' has no url"));
	assert_null(strstr(errs, "has no address"));
	free(errs);
}

static void
indented_lines(void **state)
{
	char *errs = NULL;
	struct config *cfg = load("indented.conf", &errs);

	(void)state;
	if (cfg == NULL)
		fail_msg("indented.conf rejected:\n%s", errs);
	assert_int_equal(cfg->cache_size, 100);
	assert_int_equal(cfg->cache_max_ttl, 50);
	assert_int_equal(cfg->nallow, 1);
	config_free(cfg);
	free(errs);
}

static void
directory_is_no_file(void **state)
{
	char *errs = NULL;
	size_t len;
	FILE *fp = open_memstream(&errs, &len);
	struct config *cfg;

	(void)state;
	cfg = config_load(TEST_DATA, true, fp);
	fclose(fp);
	assert_null(cfg);
	assert_non_null(strstr(errs, "Is a directory"));
	free(errs);
}

static void
abspath(void **state)
{
	char want[4200], *p;

	(void)state;
	snprintf(want, sizeof(want), "%s/a/b",
	    strcmp(config_base_dir(), "/") ? config_base_dir() : "");
	assert_string_equal(p = config_abspath("a/./b//"), want);
	free(p);
	assert_string_equal(p = config_abspath("./c/../a/b"), want);
	free(p);
	assert_string_equal(p = config_abspath("/x//y/./../z"), "/x/z");
	free(p);
	assert_string_equal(p = config_abspath("/../.."), "/");
	free(p);
	assert_string_equal(p = config_abspath(""), "");
	free(p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(abspath),
		cmocka_unit_test(addr_parsing),
		cmocka_unit_test(cidr_parsing),
		cmocka_unit_test(url_parsing),
		cmocka_unit_test(good_file),
		cmocka_unit_test(defaults),
		cmocka_unit_test(bad_files),
		cmocka_unit_test(no_cascade),
		cmocka_unit_test(indented_lines),
		cmocka_unit_test(directory_is_no_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
