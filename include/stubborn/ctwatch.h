/*
 * Certificate Transparency monitoring with Cert Spotter: the watch list
 * it needs from the conf, and the hook it runs for each event, which
 * judges a discovered certificate against the upstream's pins and trust
 * tier and turns an unexpected one into a ct-watch incident and a key on
 * the deny list.
 */
#ifndef STUBBORN_CTWATCH_H
#define STUBBORN_CTWATCH_H

#include <stdio.h>

#include "stubborn/config.h"

/* Print every upstream hostname once, as certspotter's -watchlist. */
void	ctwatch_print_watchlist(const struct config *cfg, FILE *out);

/*
 * Handle one certspotter event described by the environment
 * (certspotter-script(8)).  Unknown, malformed and error events are
 * logged.  Returns the exit status: 0, or 1 when an unexpected key could
 * not be put on the deny list.
 */
int	ctwatch_hook(const struct config *cfg);

#endif
