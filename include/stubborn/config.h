/*
 * The conf file (design.md "Conf file") parsed into an immutable
 * struct config.  Any error rejects the whole file; errors are written
 * as "file:line: message".
 */
#ifndef STUBBORN_CONFIG_H
#define STUBBORN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "stubborn/trust.h"

#define CONFIG_MAX_UPSTREAMS	64	/* a query's tried set is a 64-bit mask */
#define CONFIG_CACHE_SIZE_MAX	10000000	/* about 3 GiB of answers */
#if LONG_MAX / 86400 >= 36500
#define CONFIG_QUARANTINE_MAX	(36500L * 86400)	/* 100 years */
#else
#define CONFIG_QUARANTINE_MAX	(LONG_MAX / 2)	/* as long as time_t lasts */
#endif
#define CONFIG_DNS_PORT		53
#define CONFIG_DOT_PORT		853
#define CONFIG_DOH_PORT		443

struct addr {
	struct sockaddr_storage	ss;
	socklen_t		len;
};

struct cidr {
	int		family;		/* AF_INET or AF_INET6 */
	uint8_t		net[16];	/* masked to prefix bits */
	unsigned	prefix;
};

enum upstream_proto {
	PROTO_DOT,
	PROTO_DOH,
};
extern const char *const upstream_proto_str[];

enum ct_mode {
	CT_INHERIT = -1,	/* per-upstream: use [trust] ct */
	CT_ENFORCE,
	CT_REPORT,
	CT_OFF,
};
extern const char *const ct_mode_str[];

struct upstream_conf {
	char			*name;		/* section "upstream NAME" */
	int			 line;		/* of the section header */
	char			*url;
	enum upstream_proto	 proto;
	char			*host;		/* verified name, SNI */
	uint16_t		 port;
	char			*path;		/* DoH only */
	bool			 path_default;	/* /dns-query, for none in the url */
	struct addr		*addrs;		/* bootstrap; port filled in */
	size_t			 naddrs;
	struct pin		*pins;
	size_t			 npins;
	char			*ca_file;	/* NULL: [trust] ca-file */
	int			 ca_file_line;	/* where it was set */
	enum ct_mode		 ct;
};

enum strategy {
	STRATEGY_ORDER,		/* conf order: the first usable upstream */
	STRATEGY_FASTEST,	/* the usable one with the lowest RTT */
};
extern const char *const strategy_str[];
/* log-level values by syslog level, LOG_ERR .. LOG_DEBUG. */
extern const char *const log_level_names[];

struct config {
	char			*path;		/* NULL for built-in defaults */
	enum strategy		 strategy;

	struct addr		*listen;
	size_t			 nlisten;
	bool			 listen_default; /* nothing configured */
	struct cidr		*allow;
	size_t			 nallow;
	char			*user;
	int			 user_line;	/* where it was set */
	char			*chroot;	/* NULL: none */
	bool			 seccomp;
	int			 log_level;	/* LOG_ERR .. LOG_DEBUG */
	char			*state_dir;
	struct addr		*metrics;	/* NULL: off */

	long			 cache_size;
	long			 cache_max_ttl;
	long			 cache_serve_stale;

	char			*ca_file;	/* NULL: the system store */
	int			 ca_file_line;	/* where it was set */
	enum ct_mode		 ct;
	enum ct_policy		 ct_policy;
	char			*ct_log_list;
	char			*ct_log_list_url;
	long			 ct_max_list_age;	/* seconds */
	long			 quarantine;		/* seconds */
	char			*on_incident;

	struct upstream_conf	*upstreams;
	size_t			 nupstreams;
};

/*
 * Load path.  A missing file gives the built-in defaults unless
 * must_exist.  NULL path: the defaults alone.  Errors go to errs as
 * "file:line: message".  Returns a new config or NULL on any error.
 */
struct config *config_load(const char *path, bool must_exist, FILE *errs);

/*
 * path, absolute and without "." or ".." (by the letter): a relative one
 * is taken from the directory stubborn started in (config_base_dir).  The
 * caller frees it.
 */
char	*config_abspath(const char *path);

/* The working directory of the first config_load (or call here). */
const char *config_base_dir(void);

/* Free cfg and everything it holds; NULL is a no-op. */
void	config_free(struct config *cfg);

/* Print the effective configuration in conf-file syntax. */
void	config_print(const struct config *cfg, FILE *out);

/*
 * Parse "ip", "ip:port", "[ip6]" or "[ip6]:port" (a bare IPv6 address
 * takes no port) into *a; defport when none is given.  Returns 0 or -1.
 */
int	config_parse_addr(const char *s, uint16_t defport, struct addr *a);

/* Parse "ip/prefix" or "ip" (a host) into *c.  Returns 0 or -1. */
int	config_parse_cidr(const char *s, struct cidr *c);

/* True when the address a falls inside c. */
bool	config_cidr_match(const struct cidr *c, const struct sockaddr *a);

/*
 * Parse an upstream URL into uc's proto, host, port and path (allocated,
 * owned by uc).  Returns NULL, or a static message saying what is wrong.
 */
const char *config_parse_url(const char *url, struct upstream_conf *uc);

/*
 * Whether config_parse_url's message is the IP-literal one, whose advice
 * (an 'address =' line) only the conf can follow.
 */
bool	config_url_is_ip(const char *err);

/* Write a as "ip:port" or "[ip6]:port" into buf. */
const char *config_addr_str(const struct addr *a, char *buf, size_t bufsz);

#endif
