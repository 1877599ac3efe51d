#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <ini.h>

#include "stubborn/config.h"
#include "stubborn/sandbox.h"

#define LINE_MAX_LEN	1024

const char *const upstream_proto_str[] = {
	[PROTO_DOT] = "tls",
	[PROTO_DOH] = "https",
};

const char *const strategy_str[] = {
	[STRATEGY_ORDER] = "order",
	[STRATEGY_FASTEST] = "fastest",
};

const char *const ct_mode_str[] = {
	[CT_ENFORCE] = "enforce",
	[CT_REPORT] = "report",
	[CT_OFF] = "off",
};

enum section {
	SEC_NONE,
	SEC_SERVER,
	SEC_CACHE,
	SEC_TRUST,
	SEC_UPSTREAM,
};

static const char *const section_str[] = {
	[SEC_NONE] = "", [SEC_SERVER] = "server", [SEC_CACHE] = "cache",
	[SEC_TRUST] = "trust", [SEC_UPSTREAM] = "upstream",
};

struct parse_ctx {
	FILE			*fp;
	const char		*path;
	FILE			*errs;
	int			 line;
	int			 nerr;
	int			 last_err_line;
	int			 read_errno;	/* of the last read, or 0 */
	enum section		 section;
	struct config		*cfg;
	struct upstream_conf	*up;		/* current [upstream] */
	uint64_t		 seen_global;	/* keys seen outside upstreams */
	uint64_t		 seen_up[CONFIG_MAX_UPSTREAMS];	/* in each */
	char			 msg[256];	/* a parse function's error */
};

typedef const char *(*item_parse_fn)(struct parse_ctx *, const char *);

struct item {
	enum section	 section;
	const char	*key;
	item_parse_fn	 parse;
	bool		 repeatable;
	const char	*notyet;	/* set: accepted, but no effect yet */
};

static void conf_error(struct parse_ctx *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static void
conf_error(struct parse_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	fprintf(ctx->errs, "%s:%d: ", ctx->path, ctx->line);
	va_start(ap, fmt);
	vfprintf(ctx->errs, fmt, ap);
	va_end(ap);
	fputc('\n', ctx->errs);
	ctx->nerr++;
	ctx->last_err_line = ctx->line;
}

static char *
xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL) {
		perror("strdup");
		exit(1);	/* start-up only: nothing to fall back to */
	}
	return p;
}

/*
 * Where relative paths start: the directory stubborn started in, kept from
 * the first call, because the daemon then runs from / (or its chroot) and
 * a reload must find the same files.
 */
static const char *
base_dir(void)
{
	static char base[PATH_MAX];

	if (base[0] == '\0' && getcwd(base, sizeof(base)) == NULL)
		base[0] = '\0';
	return base;
}

const char *
config_base_dir(void)
{
	return base_dir();
}

/*
 * Absolute path p without ".", ".." or repeated slashes, in place: the
 * chroot's paths are compared as text (sandbox_path_under).  By the
 * letter, as the base came from getcwd and has no symbolic links.
 */
static void
tidy(char *p)
{
	char *in = p, *out = p;

	while (*in != '\0') {
		const char *seg;
		size_t n;

		while (*in == '/')
			in++;
		seg = in;
		in += n = strcspn(in, "/");
		if (n == 0 || (n == 1 && seg[0] == '.'))
			continue;
		if (n == 2 && seg[0] == '.' && seg[1] == '.') {
			while (out > p && *--out != '/')
				;
			continue;
		}
		*out++ = '/';
		memmove(out, seg, n);
		out += n;
	}
	if (out == p)
		*out++ = '/';
	*out = '\0';
}

char *
config_abspath(const char *path)
{
	const char *base = "";
	size_t n;
	char *p;

	if (path[0] == '\0' ||
	    (path[0] != '/' && *(base = base_dir()) == '\0'))
		return xstrdup(path);
	n = strlen(base) + 1 + strlen(path) + 1;
	if ((p = malloc(n)) == NULL) {
		perror("malloc");
		exit(1);
	}
	snprintf(p, n, "%s/%s", base, path);
	tidy(p);
	return p;
}

static void *
xgrow(void *arr, size_t n, size_t size)
{
	void *p = reallocarray(arr, n + 1, size);

	if (p == NULL) {
		perror("reallocarray");
		exit(1);
	}
	memset((char *)p + n * size, 0, size);
	return p;
}

/* Copy of s without leading and trailing blanks. */
static char *
trimdup(const char *s, size_t len)
{
	char *p;

	while (len > 0 && isspace((unsigned char)*s)) {
		s++;
		len--;
	}
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		len--;
	p = strndup(s, len);
	if (p == NULL) {
		perror("strndup");
		exit(1);
	}
	return p;
}

/*
 * Call fn on each comma-separated element of value; returns the first
 * error message.
 */
static const char *
each_element(struct parse_ctx *ctx, const char *value,
    const char *(*fn)(struct parse_ctx *, const char *))
{
	const char *p = value, *err = NULL;

	for (;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		char *el = trimdup(p, len);

		if (*el == '\0')
			err = "empty list element";
		else
			err = fn(ctx, el);
		free(el);
		if (err != NULL || comma == NULL)
			return err;
		p = comma + 1;
	}
}

int
config_parse_addr(const char *s, uint16_t defport, struct addr *a)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *port = NULL, *end;
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
	unsigned long pn = defport;
	size_t hl;

	memset(a, 0, sizeof(*a));
	if (*s == '[') {
		end = strchr(s, ']');
		if (end == NULL)
			return -1;
		hl = (size_t)(end - s - 1);
		if (hl == 0 || hl >= sizeof(host))
			return -1;
		memcpy(host, s + 1, hl);
		host[hl] = '\0';
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0')
			return -1;
	} else if (strchr(s, ':') != strrchr(s, ':')) {
		/* More than one colon: a bare IPv6 address. */
		if (strlen(s) >= sizeof(host))
			return -1;
		strcpy(host, s);
	} else {
		end = strchr(s, ':');
		hl = end ? (size_t)(end - s) : strlen(s);
		if (hl == 0 || hl >= sizeof(host))
			return -1;
		memcpy(host, s, hl);
		host[hl] = '\0';
		if (end != NULL)
			port = end + 1;
	}
	if (port != NULL) {
		char *ep;

		if (!isdigit((unsigned char)*port))
			return -1;
		errno = 0;
		pn = strtoul(port, &ep, 10);
		if (errno || *ep != '\0' || pn == 0 || pn > 65535)
			return -1;
	}
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)pn);
		a->len = sizeof(*sin);
	} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)pn);
		a->len = sizeof(*sin6);
	} else
		return -1;
	return 0;
}

const char *
config_addr_str(const struct addr *a, char *buf, size_t bufsz)
{
	char ip[INET6_ADDRSTRLEN];

	if (a->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 =
		    (const struct sockaddr_in6 *)&a->ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, bufsz, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 =
		    (const struct sockaddr_in *)&a->ss;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(buf, bufsz, "%s:%u", ip, ntohs(s4->sin_port));
	}
	return buf;
}

int
config_parse_cidr(const char *s, struct cidr *c)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t hl = slash ? (size_t)(slash - s) : strlen(s);
	unsigned long prefix;
	unsigned i, max;

	memset(c, 0, sizeof(*c));
	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, s, hl);
	host[hl] = '\0';
	if (inet_pton(AF_INET, host, c->net) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, c->net) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else
		return -1;
	prefix = max;
	if (slash != NULL) {
		char *ep;

		if (!isdigit((unsigned char)slash[1]))
			return -1;
		errno = 0;
		prefix = strtoul(slash + 1, &ep, 10);
		if (errno || *ep != '\0' || prefix > max)
			return -1;
	}
	c->prefix = (unsigned)prefix;
	for (i = 0; i < max / 8; i++) {
		unsigned bits = i * 8 >= prefix ? 0 :
		    (prefix - i * 8 >= 8 ? 8 : prefix - i * 8);

		c->net[i] &= (uint8_t)(0xff00 >> bits);
	}
	return 0;
}

bool
config_cidr_match(const struct cidr *c, const struct sockaddr *a)
{
	const uint8_t *p;
	uint8_t mapped[4];
	unsigned i, full, rest;

	if (a->sa_family == AF_INET) {
		if (c->family != AF_INET)
			return false;
		p = (const uint8_t *)&((const struct sockaddr_in *)a)->sin_addr;
	} else if (a->sa_family == AF_INET6) {
		const struct in6_addr *in6 =
		    &((const struct sockaddr_in6 *)a)->sin6_addr;

		if (c->family == AF_INET && IN6_IS_ADDR_V4MAPPED(in6)) {
			memcpy(mapped, &in6->s6_addr[12], 4);
			p = mapped;
		} else if (c->family == AF_INET6)
			p = in6->s6_addr;
		else
			return false;
	} else
		return false;
	full = c->prefix / 8;
	rest = c->prefix % 8;
	for (i = 0; i < full; i++)
		if (p[i] != c->net[i])
			return false;
	if (rest != 0 && (p[full] & (uint8_t)(0xff00 >> rest)) != c->net[full])
		return false;
	return true;
}

/* The one error callers word their own way (config_url_is_ip). */
static const char url_ip_literal[] = "URL needs a hostname, not an IP "
    "address (put the address in 'address =')";

/* A DNS hostname: LDH labels of 1..63, at most 253, not an IP literal. */
static const char *
check_hostname(const char *h)
{
	size_t len = strlen(h), label = 0, i;
	bool alpha = false;

	if (len == 0)
		return "URL has no hostname";
	if (len > 253)
		return "hostname is longer than 253 characters";
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)h[i];

		if (ch == '.') {
			if (label == 0)
				return "hostname has an empty label";
			label = 0;
			continue;
		}
		if (!isalnum(ch) && ch != '-')
			return "hostname has a character outside "
			    "letters, digits, '-' and '.'";
		if (ch == '-' && (label == 0 || h[i + 1] == '.' ||
		    h[i + 1] == '\0'))
			return "hostname has a label that starts or ends "
			    "with '-'";
		if (isalpha(ch))
			alpha = true;
		if (++label > 63)
			return "hostname has a label longer than 63";
	}
	if (label == 0)
		return "hostname has an empty label";	/* "a.b.." */
	if (!alpha)
		return url_ip_literal;
	return NULL;
}

bool
config_url_is_ip(const char *err)
{
	return err == url_ip_literal;
}

const char *
config_parse_url(const char *url, struct upstream_conf *uc)
{
	const char *p, *hend, *err;
	unsigned long port;
	size_t i;

	if (strncmp(url, "tls://", 6) == 0) {
		uc->proto = PROTO_DOT;
		port = CONFIG_DOT_PORT;
		p = url + 6;
	} else if (strncmp(url, "https://", 8) == 0) {
		uc->proto = PROTO_DOH;
		port = CONFIG_DOH_PORT;
		p = url + 8;
	} else
		return "URL must start with tls:// (DoT) or https:// (DoH)";
	if (*p == '[')
		return url_ip_literal;
	hend = p + strcspn(p, ":/?#@");
	if (*hend == '@')
		return "URL must not carry user information";
	free(uc->host);
	uc->host = strndup(p, (size_t)(hend - p));
	if (uc->host == NULL)
		return "out of memory";
	for (i = 0; uc->host[i]; i++)
		uc->host[i] = (char)tolower((unsigned char)uc->host[i]);
	/* A trailing dot names the same host; certificates carry none. */
	if (i > 1 && uc->host[i - 1] == '.')
		uc->host[i - 1] = '\0';
	if ((err = check_hostname(uc->host)) != NULL)
		return err;
	p = hend;
	if (*p == ':') {
		char *ep;

		if (!isdigit((unsigned char)p[1]))
			return "URL has a bad port";
		errno = 0;
		port = strtoul(p + 1, &ep, 10);
		if (errno || port == 0 || port > 65535 ||
		    (*ep != '\0' && *ep != '/' && *ep != '?'))
			return "URL has a bad port";
		p = ep;
	}
	uc->port = (uint16_t)port;
	free(uc->path);
	uc->path = NULL;
	if (uc->proto == PROTO_DOT) {
		if (*p != '\0' && strcmp(p, "/") != 0)
			return "a tls:// URL takes no path";
	} else {
		if (*p == '?' || *p == '#')
			return "an https:// URL takes no query or fragment";
		uc->path_default = *p == '\0';
		uc->path = xstrdup(*p == '\0' ? "/dns-query" : p);
		if (strpbrk(uc->path, "?#") != NULL)
			return "an https:// URL takes no query or fragment";
	}
	return NULL;
}

static const char *
parse_duration(struct parse_ctx *ctx, const char *v, long *out)
{
	char *ep;
	long n, mult = 1;

	if (!isdigit((unsigned char)*v))
		return "expected a number of seconds (or with s, m, h, d)";
	errno = 0;
	n = strtol(v, &ep, 10);
	switch (*ep) {
	case '\0':
	case 's':
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	default:
		ep = NULL;
		break;
	}
	if (ep == NULL || (*ep != '\0' && ep[1] != '\0') || errno ||
	    n > LONG_MAX / mult) {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "'%s' is not a duration (seconds, or a number with s, m, "
		    "h or d)", v);
		return ctx->msg;
	}
	*out = n * mult;
	return NULL;
}

static const char *
parse_count(struct parse_ctx *ctx, const char *v, long *out)
{
	char *ep;

	errno = 0;
	*out = strtol(v, &ep, 10);
	if (!isdigit((unsigned char)*v) || *ep != '\0' || errno) {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "'%s' is not a non-negative number", v);
		return ctx->msg;
	}
	return NULL;
}

static const char *
parse_file(struct parse_ctx *ctx, const char *v, char **out)
{
	free(*out);
	*out = NULL;
	if (*v == '\0')
		return NULL;
	*out = config_abspath(v);
	if (access(sandbox_path(*out), R_OK) != 0) {
		snprintf(ctx->msg, sizeof(ctx->msg), "cannot read '%s': %s",
		    v, strerror(errno));
		free(*out);
		*out = NULL;
		return ctx->msg;
	}
	return NULL;
}

/* A path: relative ones from where stubborn started (config_abspath). */
static const char *
parse_path(const char *v, char **out)
{
	free(*out);
	*out = *v ? config_abspath(v) : NULL;
	return NULL;
}

static const char *
parse_string(const char *v, char **out)
{
	free(*out);
	*out = *v ? xstrdup(v) : NULL;
	return NULL;
}

static const char *
parse_ct_mode(struct parse_ctx *ctx, const char *v, enum ct_mode *out)
{
	int i;

	for (i = CT_ENFORCE; i <= CT_OFF; i++) {
		if (strcmp(v, ct_mode_str[i]) == 0) {
			*out = (enum ct_mode)i;
			return NULL;
		}
	}
	snprintf(ctx->msg, sizeof(ctx->msg),
	    "ct must be enforce, report or off, not '%s'", v);
	return ctx->msg;
}

static const char *
listen_one(struct parse_ctx *ctx, const char *v)
{
	struct config *cfg = ctx->cfg;
	struct addr a;

	if (config_parse_addr(v, CONFIG_DNS_PORT, &a) != 0) {
		snprintf(ctx->msg, sizeof(ctx->msg), "bad listen address "
		    "'%s' (expected ip, ip:port or [ip6]:port)", v);
		return ctx->msg;
	}
	cfg->listen = xgrow(cfg->listen, cfg->nlisten, sizeof(a));
	cfg->listen[cfg->nlisten++] = a;
	return NULL;
}

static const char *
p_listen(struct parse_ctx *ctx, const char *v)
{
	if (ctx->cfg->listen_default) {
		/* The first listen line replaces the defaults. */
		ctx->cfg->nlisten = 0;
		ctx->cfg->listen_default = false;
	}
	return each_element(ctx, v, listen_one);
}

static const char *
allow_one(struct parse_ctx *ctx, const char *v)
{
	struct config *cfg = ctx->cfg;
	struct cidr c;

	if (config_parse_cidr(v, &c) != 0) {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "bad network '%s' (expected ip or ip/prefix)", v);
		return ctx->msg;
	}
	cfg->allow = xgrow(cfg->allow, cfg->nallow, sizeof(c));
	cfg->allow[cfg->nallow++] = c;
	return NULL;
}

static const char *
p_allow(struct parse_ctx *ctx, const char *v)
{
	return each_element(ctx, v, allow_one);
}

static const char *
p_user(struct parse_ctx *ctx, const char *v)
{
	ctx->cfg->user_line = ctx->line;
	return parse_string(v, &ctx->cfg->user);
}

static const char *
p_chroot(struct parse_ctx *ctx, const char *v)
{
	if (*v != '\0' && *v != '/') {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "chroot must be an absolute path, not '%s'", v);
		return ctx->msg;
	}
	return parse_string(v, &ctx->cfg->chroot);
}

static const char *
p_seccomp(struct parse_ctx *ctx, const char *v)
{
	if (strcmp(v, "yes") == 0)
		ctx->cfg->seccomp = true;
	else if (strcmp(v, "no") == 0)
		ctx->cfg->seccomp = false;
	else {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "seccomp must be yes or no, not '%s'", v);
		return ctx->msg;
	}
	return NULL;
}

const char *const log_level_names[] = {
	[LOG_ERR] = "error", [LOG_WARNING] = "warning",
	[LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

static const char *
p_log_level(struct parse_ctx *ctx, const char *v)
{
	int i;

	for (i = LOG_ERR; i <= LOG_DEBUG; i++)
		if (strcmp(v, log_level_names[i]) == 0) {
			ctx->cfg->log_level = i;
			return NULL;
		}
	snprintf(ctx->msg, sizeof(ctx->msg), "log-level must be error, "
	    "warning, notice, info or debug, not '%s'", v);
	return ctx->msg;
}

static const char *
p_strategy(struct parse_ctx *ctx, const char *v)
{
	if (strcmp(v, "order") == 0)
		ctx->cfg->strategy = STRATEGY_ORDER;
	else if (strcmp(v, "fastest") == 0)
		ctx->cfg->strategy = STRATEGY_FASTEST;
	else {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "strategy must be order or fastest, not '%s'", v);
		return ctx->msg;
	}
	return NULL;
}

static const char *
p_state_dir(struct parse_ctx *ctx, const char *v)
{
	return parse_path(v, &ctx->cfg->state_dir);
}

static const char *
p_metrics(struct parse_ctx *ctx, const char *v)
{
	struct addr a;

	free(ctx->cfg->metrics);
	ctx->cfg->metrics = NULL;
	if (*v == '\0')
		return NULL;
	if (config_parse_addr(v, 9153, &a) != 0) {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "bad metrics address '%s'", v);
		return ctx->msg;
	}
	ctx->cfg->metrics = malloc(sizeof(a));
	if (ctx->cfg->metrics == NULL)
		return "out of memory";
	*ctx->cfg->metrics = a;
	return NULL;
}

/* err, or an error when *out is above max. */
static const char *
at_most(struct parse_ctx *ctx, const char *err, const char *v, long *out,
    long max)
{
	if (err == NULL && *out > max) {
		snprintf(ctx->msg, sizeof(ctx->msg), "'%s' is above %ld", v,
		    max);
		return ctx->msg;
	}
	return err;
}

/* A duration whose 0 would quietly turn a safeguard off. */
static const char *
above_zero(struct parse_ctx *ctx, const char *err, const char *v,
    const long *out, const char *why)
{
	if (err == NULL && *out == 0) {
		snprintf(ctx->msg, sizeof(ctx->msg), "'%s' must be more than "
		    "0: %s", v, why);
		return ctx->msg;
	}
	return err;
}

static const char *
p_cache_size(struct parse_ctx *ctx, const char *v)
{
	return at_most(ctx, parse_count(ctx, v, &ctx->cfg->cache_size), v,
	    &ctx->cfg->cache_size, CONFIG_CACHE_SIZE_MAX);
}

/* TTLs are 31 bits (RFC 2181 8). */
static const char *
p_max_ttl(struct parse_ctx *ctx, const char *v)
{
	return at_most(ctx, parse_duration(ctx, v, &ctx->cfg->cache_max_ttl),
	    v, &ctx->cfg->cache_max_ttl, INT32_MAX);
}

static const char *
p_serve_stale(struct parse_ctx *ctx, const char *v)
{
	return at_most(ctx, parse_duration(ctx, v,
	    &ctx->cfg->cache_serve_stale), v, &ctx->cfg->cache_serve_stale,
	    INT32_MAX);
}

static const char *
p_ca_file(struct parse_ctx *ctx, const char *v)
{
	ctx->cfg->ca_file_line = ctx->line;
	return parse_file(ctx, v, &ctx->cfg->ca_file);
}

static const char *
p_ct(struct parse_ctx *ctx, const char *v)
{
	return parse_ct_mode(ctx, v, &ctx->cfg->ct);
}

static const char *
p_ct_policy(struct parse_ctx *ctx, const char *v)
{
	if (strcmp(v, "chrome") == 0)
		ctx->cfg->ct_policy = CT_POLICY_CHROME;
	else if (strcmp(v, "apple") == 0)
		ctx->cfg->ct_policy = CT_POLICY_APPLE;
	else {
		snprintf(ctx->msg, sizeof(ctx->msg),
		    "ct-policy must be chrome or apple, not '%s'", v);
		return ctx->msg;
	}
	return NULL;
}

static const char *
p_ct_log_list(struct parse_ctx *ctx, const char *v)
{
	return parse_path(v, &ctx->cfg->ct_log_list);
}

/* Read as update-log-list will read it, so a bad one fails here. */
static const char *
p_ct_log_list_url(struct parse_ctx *ctx, const char *v)
{
	struct upstream_conf uc;
	const char *err;

	if (*v != '\0' && strncmp(v, "https://", 8) != 0)
		return "ct-log-list-url must be an https:// URL";
	if (*v != '\0') {
		memset(&uc, 0, sizeof(uc));
		err = config_parse_url(v, &uc);
		free(uc.host);
		free(uc.path);
		if (config_url_is_ip(err))
			return "ct-log-list-url needs a hostname, not an IP "
			    "address";
		if (err != NULL)
			return err;
	}
	return parse_string(v, &ctx->cfg->ct_log_list_url);
}

static const char *
p_ct_max_list_age(struct parse_ctx *ctx, const char *v)
{
	return above_zero(ctx, parse_duration(ctx, v,
	    &ctx->cfg->ct_max_list_age), v, &ctx->cfg->ct_max_list_age,
	    "every list would be stale, and CT report-only for good");
}

static const char *
p_quarantine(struct parse_ctx *ctx, const char *v)
{
	/* A century is "for good"; more would overflow the clock's sum. */
	return above_zero(ctx, at_most(ctx, parse_duration(ctx, v,
	    &ctx->cfg->quarantine), v, &ctx->cfg->quarantine,
	    CONFIG_QUARANTINE_MAX), v, &ctx->cfg->quarantine, "an upstream "
	    "that fails the gate would be tried again at the next query");
}

static const char *
p_on_incident(struct parse_ctx *ctx, const char *v)
{
	return parse_string(v, &ctx->cfg->on_incident);
}

static const char *
p_url(struct parse_ctx *ctx, const char *v)
{
	const char *err;

	free(ctx->up->url);
	ctx->up->url = xstrdup(v);
	if ((err = config_parse_url(v, ctx->up)) != NULL) {
		snprintf(ctx->msg, sizeof(ctx->msg), "bad url '%s': %s", v,
		    err);
		return ctx->msg;
	}
	return NULL;
}

static const char *
address_one(struct parse_ctx *ctx, const char *v)
{
	struct upstream_conf *uc = ctx->up;
	struct addr a;

	/* The port comes from the URL unless the address names one. */
	if (config_parse_addr(v, 0xffff, &a) != 0) {
		snprintf(ctx->msg, sizeof(ctx->msg), "bad address '%s' "
		    "(expected an IP address, optionally with :port)", v);
		return ctx->msg;
	}
	uc->addrs = xgrow(uc->addrs, uc->naddrs, sizeof(a));
	uc->addrs[uc->naddrs++] = a;
	return NULL;
}

static const char *
p_address(struct parse_ctx *ctx, const char *v)
{
	return each_element(ctx, v, address_one);
}

static const char *
pin_one(struct parse_ctx *ctx, const char *v)
{
	struct upstream_conf *uc = ctx->up;
	struct pin p;

	if (trust_pin_parse(v, &p) != 0) {
		snprintf(ctx->msg, sizeof(ctx->msg), "bad pin '%s' (expected "
		    "sha256/ and the base64 of 32 bytes)", v);
		return ctx->msg;
	}
	uc->pins = xgrow(uc->pins, uc->npins, sizeof(p));
	uc->pins[uc->npins++] = p;
	return NULL;
}

static const char *
p_pin(struct parse_ctx *ctx, const char *v)
{
	return each_element(ctx, v, pin_one);
}

static const char *
p_up_ca_file(struct parse_ctx *ctx, const char *v)
{
	ctx->up->ca_file_line = ctx->line;
	return parse_file(ctx, v, &ctx->up->ca_file);
}

static const char *
p_up_ct(struct parse_ctx *ctx, const char *v)
{
	if (*v == '\0') {
		ctx->up->ct = CT_INHERIT;
		return NULL;
	}
	return parse_ct_mode(ctx, v, &ctx->up->ct);
}


static const struct item items[] = {
	{ SEC_SERVER, "listen", p_listen, true, NULL },
	{ SEC_SERVER, "allow", p_allow, true, NULL },
	{ SEC_SERVER, "user", p_user, false, NULL },
	{ SEC_SERVER, "chroot", p_chroot, false, NULL },
	{ SEC_SERVER, "seccomp", p_seccomp, false, NULL },
	{ SEC_SERVER, "log-level", p_log_level, false, NULL },
	{ SEC_SERVER, "strategy", p_strategy, false, NULL },
	{ SEC_SERVER, "state-dir", p_state_dir, false, NULL },
	{ SEC_SERVER, "metrics", p_metrics, false, NULL },
	{ SEC_CACHE, "size", p_cache_size, false, NULL },
	{ SEC_CACHE, "max-ttl", p_max_ttl, false, NULL },
	{ SEC_CACHE, "serve-stale", p_serve_stale, false, NULL },
	{ SEC_TRUST, "ca-file", p_ca_file, false, NULL },
	{ SEC_TRUST, "ct", p_ct, false, NULL },
	{ SEC_TRUST, "ct-policy", p_ct_policy, false, NULL },
	{ SEC_TRUST, "ct-log-list", p_ct_log_list, false, NULL },
	{ SEC_TRUST, "ct-log-list-url", p_ct_log_list_url, false, NULL },
	{ SEC_TRUST, "ct-max-list-age", p_ct_max_list_age, false, NULL },
	{ SEC_TRUST, "quarantine", p_quarantine, false, NULL },
	{ SEC_TRUST, "on-incident", p_on_incident, false, NULL },
	{ SEC_UPSTREAM, "url", p_url, false, NULL },
	{ SEC_UPSTREAM, "address", p_address, true, NULL },
	{ SEC_UPSTREAM, "pin", p_pin, true, NULL },
	{ SEC_UPSTREAM, "ca-file", p_up_ca_file, false, NULL },
	{ SEC_UPSTREAM, "ct", p_up_ct, false, NULL },
};

/* The key's bit in a set of keys seen (one bit per entry of items). */
static uint64_t
item_bit(enum section sec, const char *key)
{
	size_t i;

	for (i = 0; i < sizeof(items) / sizeof(items[0]); i++)
		if (items[i].section == sec && strcmp(items[i].key, key) == 0)
			return (uint64_t)1 << i;
	return 0;
}

static void
start_section(struct parse_ctx *ctx, const char *name)
{
	struct config *cfg = ctx->cfg;
	struct upstream_conf *uc;
	const char *un;
	size_t i;

	ctx->up = NULL;
	ctx->section = SEC_NONE;
	for (i = SEC_SERVER; i < SEC_UPSTREAM; i++) {
		if (strcmp(name, section_str[i]) == 0) {
			ctx->section = (enum section)i;
			return;
		}
	}
	if (strncmp(name, "upstream", 8) != 0 ||
	    !isspace((unsigned char)name[8])) {
		if (strcmp(name, "upstream") == 0)
			conf_error(ctx, "[upstream] needs a name: "
			    "[upstream NAME]");
		else
			conf_error(ctx, "unknown section [%s]", name);
		return;
	}
	un = name + 9;
	while (isspace((unsigned char)*un))
		un++;
	if (un[strspn(un, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789._-")] != '\0') {
		conf_error(ctx, "upstream name '%s' may hold only letters, "
		    "digits, '.', '_' and '-'", un);
		return;
	}
	for (i = 0; i < cfg->nupstreams; i++) {
		if (strcmp(cfg->upstreams[i].name, un) == 0) {
			conf_error(ctx, "upstream '%s' is defined twice", un);
			return;
		}
	}
	if (cfg->nupstreams == CONFIG_MAX_UPSTREAMS) {
		conf_error(ctx, "more than %d upstreams", CONFIG_MAX_UPSTREAMS);
		return;
	}
	cfg->upstreams = xgrow(cfg->upstreams, cfg->nupstreams, sizeof(*uc));
	uc = &cfg->upstreams[cfg->nupstreams++];
	uc->name = xstrdup(un);
	uc->line = ctx->line;
	uc->ct = CT_INHERIT;
	ctx->up = uc;
	ctx->section = SEC_UPSTREAM;
}

/*
 * inih's reader: a line at a time, counted (the shared library is built
 * without line numbers for handlers), and every section header seen,
 * even one without keys.
 */
static char *
conf_reader(char *str, int num, void *stream)
{
	struct parse_ctx *ctx = stream;
	char *p, *end;
	size_t len = 0, max = (size_t)num - 2;	/* room for "\n\0" */
	bool nul = false, got = false, bom = ctx->line == 0;
	int ch, last = EOF;

	/*
	 * A byte at a time: fgets would hide a NUL, and everything after
	 * it on the line, from inih.  The line end's CR (CRLF files) and a
	 * UTF-8 byte order mark before the first line are no characters of
	 * the line.
	 */
	while ((ch = getc(ctx->fp)) != EOF && ch != '\n') {
		got = true;
		if (ch == '\0')
			nul = true;
		if (len <= max)
			str[len] = (char)ch;
		last = ch;
		if (++len == 3 && bom) {
			bom = false;
			if (memcmp(str, "\xef\xbb\xbf", 3) == 0) {
				len = 0;
				last = EOF;
			}
		}
	}
	if (ch == EOF && (!got || ferror(ctx->fp))) {
		ctx->read_errno = !ferror(ctx->fp) ? 0 : errno ? errno : EIO;
		return NULL;
	}
	ctx->line++;
	if (last == '\r')
		len--;
	if (nul || len > max) {
		if (nul)
			conf_error(ctx, "a NUL byte in the line");
		else
			conf_error(ctx, "line longer than %d characters",
			    num - 2);
		str[0] = '\0';
		return str;
	}
	str[len] = '\n';
	str[len + 1] = '\0';
	for (p = str; isspace((unsigned char)*p); p++)
		;
	/*
	 * inih reads an indented line as the continuation of the value
	 * before it: it would join an indented key to the wrong one.
	 */
	if (p != str)
		memmove(str, p, strlen(p) + 1);
	p = str;
	if (*p == '[') {
		end = strchr(p, ']');
		if (end == NULL) {
			conf_error(ctx, "section header without ']'");
			str[0] = '\0';	/* inih would stop on it */
			ctx->section = SEC_NONE;
			ctx->up = NULL;
			return str;
		}
		*end = '\0';
		p = trimdup(p + 1, strlen(p + 1));
		*end = ']';
		start_section(ctx, p);
		free(p);
	}
	return str;
}

static int
conf_handler(void *user, const char *section, const char *name,
    const char *value)
{
	struct parse_ctx *ctx = user;
	const struct item *it = NULL;
	const char *err;
	uint64_t *seen, bit;
	size_t i;

	(void)section;	/* conf_reader tracked it, with its validation */
	if (ctx->section == SEC_NONE) {
		/* An unknown section was already reported once. */
		if (section[0] == '\0')
			conf_error(ctx, "'%s' outside any section", name);
		return 1;
	}
	for (i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
		if (items[i].section == ctx->section &&
		    strcmp(items[i].key, name) == 0) {
			it = &items[i];
			break;
		}
	}
	if (it == NULL) {
		conf_error(ctx, "unknown key '%s' in [%s]", name,
		    section_str[ctx->section]);
		return 1;
	}
	seen = ctx->section == SEC_UPSTREAM ?
	    &ctx->seen_up[ctx->up - ctx->cfg->upstreams] :
	    &ctx->seen_global;
	bit = (uint64_t)1 << i;
	if (!it->repeatable && (*seen & bit)) {
		conf_error(ctx, "'%s' given twice in [%s]", name,
		    section_str[ctx->section]);
		return 1;
	}
	*seen |= bit;
	if ((err = it->parse(ctx, value)) != NULL)
		conf_error(ctx, "%s", err);
	else if (it->notyet != NULL && *value != '\0')
		fprintf(ctx->errs, "%s:%d: warning: '%s' has no effect in "
		    "this version: %s\n", ctx->path, ctx->line, name,
		    it->notyet);
	return 1;
}

struct builtin_upstream {
	const char	*name;
	const char	*url;
	const char	*addrs;
};

/*
 * Public providers by hostname, with the addresses they publish.  No pins:
 * their keys rotate; pin in a conf file when you can follow the rotation.
 */
static const struct builtin_upstream builtin_upstreams[] = {
	{ "cloudflare", "https://cloudflare-dns.com/dns-query",
	    "1.1.1.1, 1.0.0.1, 2606:4700:4700::1111, 2606:4700:4700::1001" },
	{ "quad9", "tls://dns.quad9.net",
	    "9.9.9.9, 149.112.112.112, 2620:fe::fe, 2620:fe::9" },
	{ "google", "https://dns.google/dns-query",
	    "8.8.8.8, 8.8.4.4, 2001:4860:4860::8888, 2001:4860:4860::8844" },
};

static void
defaults(struct parse_ctx *ctx)
{
	struct config *cfg = ctx->cfg;

	listen_one(ctx, "127.0.0.1:53");
	listen_one(ctx, "[::1]:53");
	cfg->listen_default = true;
	cfg->state_dir = xstrdup("/var/lib/stubborn");
	cfg->seccomp = true;
	cfg->log_level = LOG_INFO;
	cfg->cache_size = 10000;
	cfg->cache_max_ttl = 86400;
	cfg->cache_serve_stale = 0;
	cfg->ct = CT_ENFORCE;
	cfg->ct_policy = CT_POLICY_CHROME;
	cfg->ct_log_list = xstrdup("/var/lib/stubborn/log_list.json");
	cfg->ct_max_list_age = 70 * 86400;
	cfg->quarantine = 3600;
}

static void
builtin_upstreams_add(struct parse_ctx *ctx)
{
	size_t i;

	for (i = 0; i < sizeof(builtin_upstreams) /
	    sizeof(builtin_upstreams[0]); i++) {
		char sec[64];

		snprintf(sec, sizeof(sec), "upstream %s",
		    builtin_upstreams[i].name);
		start_section(ctx, sec);
		if (p_url(ctx, builtin_upstreams[i].url) != NULL ||
		    p_address(ctx, builtin_upstreams[i].addrs) != NULL)
			abort();	/* the table above is wrong */
	}
}

/* Checks that need the whole file: every upstream complete. */
static void
validate(struct parse_ctx *ctx)
{
	struct config *cfg = ctx->cfg;
	size_t i, j;

	if (cfg->nallow == 0) {
		allow_one(ctx, "127.0.0.0/8");
		allow_one(ctx, "::1/128");
	}
	for (i = 0; i < cfg->nupstreams; i++) {
		struct upstream_conf *uc = &cfg->upstreams[i];

		/* A bad url or address line was reported as such. */
		if (uc->url == NULL || uc->host == NULL) {
			if (ctx->seen_up[i] & item_bit(SEC_UPSTREAM, "url"))
				continue;
			ctx->line = uc->line;
			conf_error(ctx, "upstream '%s' has no url", uc->name);
			continue;
		}
		if (uc->naddrs == 0 &&
		    !(ctx->seen_up[i] & item_bit(SEC_UPSTREAM, "address"))) {
			ctx->line = uc->line;
			conf_error(ctx, "upstream '%s' has no address (the "
			    "bootstrap address to connect to; the hostname is "
			    "what is verified)", uc->name);
		}
		for (j = 0; j < uc->naddrs; j++) {
			struct sockaddr_in *s4 =
			    (struct sockaddr_in *)&uc->addrs[j].ss;
			struct sockaddr_in6 *s6 =
			    (struct sockaddr_in6 *)&uc->addrs[j].ss;
			uint16_t *port = s4->sin_family == AF_INET ?
			    &s4->sin_port : &s6->sin6_port;

			if (*port == htons(0xffff))
				*port = htons(uc->port);
		}
	}
}

struct config *
config_load(const char *path, bool must_exist, FILE *errs)
{
	struct parse_ctx ctx;
	struct config *cfg;
	const char *why;
	int rc;

	(void)base_dir();	/* now, before any chdir */
	memset(&ctx, 0, sizeof(ctx));
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		return NULL;
	ctx.cfg = cfg;
	ctx.errs = errs;
	ctx.path = path ? path : "(built-in)";
	defaults(&ctx);
	if (path != NULL && (ctx.fp = sandbox_fopen_regular(sandbox_path(path),
	    &why)) == NULL && (errno != ENOENT || must_exist)) {
		fprintf(errs, "%s: %s\n", path, why);
		config_free(cfg);
		return NULL;
	}
	if (ctx.fp != NULL) {
		cfg->path = xstrdup(path);
		rc = ini_parse_stream(conf_reader, &ctx, conf_handler, &ctx);
		if (ctx.read_errno != 0) {
			fprintf(errs, "%s: %s\n", path,
			    strerror(ctx.read_errno));
			fclose(ctx.fp);
			config_free(cfg);
			return NULL;
		}
		fclose(ctx.fp);
		if (rc > 0 && rc != ctx.last_err_line) {
			/* inih's own syntax error: a line with no '='. */
			ctx.line = rc;
			conf_error(&ctx, "syntax error (expected key = value, "
			    "[section] or a comment)");
		}
	}
	if (cfg->nupstreams == 0) {
		/* Said out loud: queries will leave for public resolvers. */
		if (cfg->path != NULL)
			fprintf(errs, "%s: warning: no [upstream] section; the "
			    "built-in public upstreams serve\n", path);
		builtin_upstreams_add(&ctx);
	}
	validate(&ctx);
	if (ctx.nerr > 0) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

void
config_free(struct config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < cfg->nupstreams; i++) {
		struct upstream_conf *uc = &cfg->upstreams[i];

		free(uc->name);
		free(uc->url);
		free(uc->host);
		free(uc->path);
		free(uc->addrs);
		free(uc->pins);
		free(uc->ca_file);
	}
	free(cfg->upstreams);
	free(cfg->path);
	free(cfg->listen);
	free(cfg->allow);
	free(cfg->user);
	free(cfg->chroot);
	free(cfg->state_dir);
	free(cfg->metrics);
	free(cfg->ca_file);
	free(cfg->ct_log_list);
	free(cfg->ct_log_list_url);
	free(cfg->on_incident);
	free(cfg);
}

static void
print_cidr(const struct cidr *c, FILE *out)
{
	char ip[INET6_ADDRSTRLEN];

	inet_ntop(c->family, c->net, ip, sizeof(ip));
	fprintf(out, "%s/%u", ip, c->prefix);
}

void
config_print(const struct config *cfg, FILE *out)
{
	char buf[INET6_ADDRSTRLEN + 16], pin[TRUST_PIN_STR_MAX];
	size_t i, j;

	fprintf(out, "; effective configuration from %s\n[server]\n",
	    cfg->path ? cfg->path : "built-in defaults");
	for (i = 0; i < cfg->nlisten; i++)
		fprintf(out, "listen = %s\n",
		    config_addr_str(&cfg->listen[i], buf, sizeof(buf)));
	fprintf(out, "allow = ");
	for (i = 0; i < cfg->nallow; i++) {
		if (i)
			fprintf(out, ", ");
		print_cidr(&cfg->allow[i], out);
	}
	/* Keys this version accepts but does not act on are shown as such. */
	fprintf(out, "\nuser = %s\nchroot = %s\nseccomp = %s\n"
	    "log-level = %s\nstrategy = %s\nstate-dir = %s\nmetrics = %s\n",
	    cfg->user ? cfg->user : "", cfg->chroot ? cfg->chroot : "",
	    cfg->seccomp ? "yes" : "no", log_level_names[cfg->log_level],
	    strategy_str[cfg->strategy],
	    cfg->state_dir ? cfg->state_dir : "",
	    cfg->metrics ? config_addr_str(cfg->metrics, buf, sizeof(buf)) : "");
	fprintf(out, "\n[cache]\nsize = %ld\nmax-ttl = %ld\n"
	    "serve-stale = %ld\n",
	    cfg->cache_size, cfg->cache_max_ttl, cfg->cache_serve_stale);
	fprintf(out, "\n[trust]\nca-file = %s\nquarantine = %ld\n"
	    "ct = %s\nct-policy = %s\nct-log-list = %s\n"
	    "ct-max-list-age = %ld\nct-log-list-url = %s\n"
	    "on-incident = %s\n",
	    cfg->ca_file ? cfg->ca_file : "", cfg->quarantine,
	    ct_mode_str[cfg->ct], ct_policy_str[cfg->ct_policy],
	    cfg->ct_log_list ? cfg->ct_log_list : "", cfg->ct_max_list_age,
	    cfg->ct_log_list_url ? cfg->ct_log_list_url : "",
	    cfg->on_incident ? cfg->on_incident : "");
	for (i = 0; i < cfg->nupstreams; i++) {
		const struct upstream_conf *uc = &cfg->upstreams[i];

		/* The effective URL: DoH's default path, no default port. */
		fprintf(out, "\n[upstream %s]\nurl = %s://%s", uc->name,
		    uc->proto == PROTO_DOH ? "https" : "tls", uc->host);
		if (uc->port != (uc->proto == PROTO_DOH ? CONFIG_DOH_PORT :
		    CONFIG_DOT_PORT))
			fprintf(out, ":%u", uc->port);
		fprintf(out, "%s\naddress = ", uc->proto == PROTO_DOH &&
		    uc->path ? uc->path : "");
		for (j = 0; j < uc->naddrs; j++)
			fprintf(out, "%s%s", j ? ", " : "",
			    config_addr_str(&uc->addrs[j], buf, sizeof(buf)));
		fputc('\n', out);
		for (j = 0; j < uc->npins; j++) {
			trust_pin_format(&uc->pins[j], pin, sizeof(pin));
			fprintf(out, "pin = %s\n", pin);
		}
		if (uc->ca_file)
			fprintf(out, "ca-file = %s\n", uc->ca_file);
		if (uc->ct != CT_INHERIT)
			fprintf(out, "ct = %s\n", ct_mode_str[uc->ct]);
	}
}
