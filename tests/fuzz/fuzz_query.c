/* A client's query, as the listener and resolver see it. */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include "stubborn/cache.h"
#include "stubborn/dnsmsg.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	uint8_t out[DNSMSG_HDR_LEN + 260], up[DNSMSG_UPSTREAM_MAX];
	struct dnsmsg_info info;
	struct cache_key k;
	char name[256];

	enum dnsmsg_status st = dnsmsg_parse_query(data, len, &info);

	if (st == DNSMSG_OK) {
		cache_key_make(data, info.qend, info.do_bit, &k);
		dnsmsg_upstream_query(data, &info, up);
		dnsmsg_qname_str(data, len, name, sizeof(name));
	}
	if (st != DNSMSG_DROP)
		dnsmsg_error_reply(data, len, &info, DNS_RCODE_SERVFAIL, out,
		    sizeof(out));
	return 0;
}
