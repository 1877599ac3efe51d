/* The conf file, with every error reported and none fatal. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "stubborn/config.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	static FILE *devnull;
	struct config *cfg;
	char path[64];
	int fd;

	if (devnull == NULL)
		devnull = fopen("/dev/null", "w");
	/* config_load reads a path; a memfd gives one without a disk. */
	if ((fd = memfd_create("conf", 0)) == -1)
		return 0;
	if (write(fd, data, len) == (ssize_t)len) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		cfg = config_load(path, true, devnull);
		if (cfg != NULL)
			config_print(cfg, devnull);
		config_free(cfg);
	}
	close(fd);
	return 0;
}
