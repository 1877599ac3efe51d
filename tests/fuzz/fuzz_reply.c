/*
 * An upstream's reply, through everything the resolver does with one:
 * matching it to the query, the TTL clamp, the client's OPT, the cache
 * and UDP truncation.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include "stubborn/cache.h"
#include "stubborn/dnsmsg.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* "a.zone.test. A IN", as stubborn asks it. */
static const uint8_t query[] = {
	0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0,
	1, 'a', 4, 'z', 'o', 'n', 'e', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1,
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	static uint8_t m[DNSMSG_MAX_LEN + 11], out[DNSMSG_MAX_LEN + 11];
	static struct cache *c;
	struct cache_key k;
	size_t n;

	if (len > DNSMSG_MAX_LEN)
		return 0;
	if (c == NULL)
		c = cache_new(16, 3600, 60);
	memcpy(m, data, len);
	if (len >= DNSMSG_HDR_LEN)
		(void)dnsmsg_reply_matches(m, len, query, sizeof(query));
	n = dnsmsg_reply_normalize(m, len, sizeof(m), 60);
	cache_key_make(query, sizeof(query), false, &k);
	if (n >= DNSMSG_HDR_LEN && cache_store(c, &k, m, n, 1000)) {
		n = cache_lookup(c, &k, 2000, false, out, sizeof(out));
		n = cache_lookup(c, &k, 4000000, true, out, sizeof(out));
	}
	n = dnsmsg_client_opt(m, dnsmsg_client_opt(m, len, sizeof(m), false),
	    sizeof(m), false);
	(void)dnsmsg_truncate(m, n, 512);
	return 0;
}
