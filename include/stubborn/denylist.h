/*
 * The deny list: keys the trust gate refuses whatever an upstream's pins
 * say, kept in state-dir.  `stubborn ct-hook` adds the key of every
 * certificate that CT monitoring found and the trust settings do not
 * expect; the running daemon watches the file and takes it up at once.
 */
#ifndef STUBBORN_DENYLIST_H
#define STUBBORN_DENYLIST_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <event2/event.h>
#include <openssl/x509.h>

#include "stubborn/trust.h"

#define DENYLIST_FILE	"denylist"

/* The keys this process refuses from now on (keys taken over; may be NULL). */
void	denylist_set(struct pin *keys, size_t n);
size_t	denylist_count(void);

/*
 * The depth of the first certificate of chain whose key is denied (its
 * pin in *hit), or -1.
 */
int	denylist_check(STACK_OF(X509) *chain, struct pin *hit);

/*
 * Read the deny list at path into *keys and *n.  A missing file is an
 * empty list; a line that does not parse is reported to errs and skipped.
 * Returns 0, or -1 when the file cannot be read.
 */
int	denylist_load(const char *path, struct pin **keys, size_t *n,
	    FILE *errs);

/*
 * Add key with a note (the rest of its line) to the file at path: under a
 * lock, written whole to a temporary file, synced and renamed over, so a
 * crash or a full disk leaves the old list.  Returns 1 when added, 0 when
 * it was there already, -1 on failure (logged).
 */
int	denylist_add(const char *path, const struct pin *key,
	    const char *note);

/*
 * Watch path (checked every second): on a change the new list is set and
 * changed(added, arg) runs with the number of keys new to this process.
 */
struct denylist_watch;
struct denylist_watch *denylist_watch_start(struct event_base *base,
	    const char *path, void (*changed)(size_t, void *), void *arg);
void	denylist_watch_stop(struct denylist_watch *w);

/* Keys the daemon took up while running (for metrics). */
uint64_t denylist_added_total(void);

#endif
