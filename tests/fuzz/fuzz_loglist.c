/* A CT log list, as update-log-list fetches it. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>

#include "stubborn/ct.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	static FILE *devnull;

	if (devnull == NULL)
		devnull = fopen("/dev/null", "w");
	ct_loglist_free(ct_loglist_parse((const char *)data, len, "fuzz",
	    devnull));
	return 0;
}
