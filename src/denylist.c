#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "stubborn/denylist.h"
#include "stubborn/log.h"
#include "stubborn/sandbox.h"

static struct pin	*deny;
static size_t		 ndeny;
static uint64_t		 added_total;

void
denylist_set(struct pin *keys, size_t n)
{
	free(deny);
	deny = keys;
	ndeny = keys != NULL ? n : 0;
}

size_t
denylist_count(void)
{
	return ndeny;
}

uint64_t
denylist_added_total(void)
{
	return added_total;
}

int
denylist_check(STACK_OF(X509) *chain, struct pin *hit)
{
	struct pin p;
	int i;

	for (i = 0; ndeny > 0 && chain != NULL && i < sk_X509_num(chain); i++)
		if (trust_pin_of_cert(sk_X509_value(chain, i), &p) == 0 &&
		    trust_pin_match(deny, ndeny, &p)) {
			*hit = p;
			return i;
		}
	return -1;
}

/* The longest line read, its newline aside. */
#define LINE_MAX_LEN	1022

int
denylist_load(const char *path, struct pin **keys, size_t *n, FILE *errs)
{
	char *line = NULL;
	struct pin *set = NULL, p;
	size_t cap = 0, lineno = 0, linecap = 0;
	const char *why;
	ssize_t len;
	FILE *fp;

	*keys = NULL;
	*n = 0;
	if ((fp = sandbox_fopen_regular(path, &why)) == NULL) {
		if (errno == ENOENT)
			return 0;
		fprintf(errs, "%s: %s\n", path, why);
		return -1;
	}
	/*
	 * Lines end where getline says: a NUL byte (a torn write leaves
	 * them) ends the line's text for strtok_r, never the line itself,
	 * so the line after it is still read.
	 */
	while ((len = getline(&line, &linecap, fp)) != -1) {
		char *tok, *save = NULL;

		lineno++;
		if ((size_t)len - (line[len - 1] == '\n') > LINE_MAX_LEN) {
			fprintf(errs, "%s:%zu: line too long, skipped\n",
			    path, lineno);
			continue;
		}
		tok = strtok_r(line, " \t\r\n", &save);
		if (tok == NULL || *tok == '#')
			continue;
		if (trust_pin_parse(tok, &p) != 0) {
			fprintf(errs, "%s:%zu: not a key (sha256/...), "
			    "skipped\n", path, lineno);
			continue;
		}
		if (trust_pin_match(set, *n, &p))
			continue;
		if (*n == cap) {
			struct pin *np;

			cap = cap ? cap * 2 : 16;
			if ((np = reallocarray(set, cap, sizeof(*np))) == NULL) {
				fclose(fp);
				free(line);
				free(set);
				*n = 0;
				fprintf(errs, "%s: out of memory\n", path);
				return -1;
			}
			set = np;
		}
		set[(*n)++] = p;
	}
	free(line);
	fclose(fp);
	*keys = set;
	return 0;
}

/* Write data to a new file beside path, sync it and rename it over. */
static int
replace_file(const char *path, const char *data, size_t len)
{
	char tmp[4096], dir[4096];
	int fd, dfd, e = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp))
		return -1;
	if ((fd = mkstemp(tmp)) == -1)
		return -1;
	if (fchmod(fd, 0644) != 0 ||
	    write(fd, data, len) != (ssize_t)len || fsync(fd) != 0)
		e = errno ? errno : EIO;
	if (close(fd) != 0 && e == 0)
		e = errno;
	if (e == 0 && rename(tmp, path) != 0)
		e = errno;
	if (e != 0) {
		unlink(tmp);
		errno = e;
		return -1;
	}
	/* The rename itself must survive a crash. */
	snprintf(dir, sizeof(dir), "%s", path);
	if ((dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY)) != -1) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

int
denylist_add(const char *path, const struct pin *key, const char *note)
{
	char lockpath[4096], pin[TRUST_PIN_STR_MAX], *old = NULL, *buf = NULL;
	struct pin *keys;
	size_t n, oldlen = 0, len;
	const char *why;
	FILE *fp;
	int lock, rc = -1;

	snprintf(lockpath, sizeof(lockpath), "%s.lock", path);
	if ((lock = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) == -1 ||
	    flock(lock, LOCK_EX) != 0) {
		log_warn("deny list %s: lock", path);
		if (lock != -1)
			close(lock);
		return -1;
	}
	/* Unreadable lines stay as they are; a key already there is done. */
	if (denylist_load(path, &keys, &n, stderr) != 0)
		goto out;
	if (trust_pin_match(keys, n, key)) {
		free(keys);
		rc = 0;
		goto out;
	}
	free(keys);
	/* Read again as loaded: a list that cannot be is never rewritten. */
	if ((fp = sandbox_fopen_regular(path, &why)) == NULL) {
		if (errno != ENOENT) {
			log_warnx("deny list %s: %s", path, why);
			goto out;
		}
	} else {
		FILE *mem = open_memstream(&old, &oldlen);
		char chunk[4096];
		size_t got;

		while (mem != NULL &&
		    (got = fread(chunk, 1, sizeof(chunk), fp)) > 0)
			fwrite(chunk, 1, got, mem);
		fclose(fp);
		if (mem == NULL || fclose(mem) != 0)
			goto out;
	}
	trust_pin_format(key, pin, sizeof(pin));
	if ((fp = open_memstream(&buf, &len)) == NULL)
		goto out;
	if (oldlen == 0)
		fputs("# stubborn deny list: keys the trust gate refuses "
		    "(stubborn(8), FILES)\n", fp);
	else if (fwrite(old, 1, oldlen, fp) == oldlen &&
	    old[oldlen - 1] != '\n')
		fputc('\n', fp);
	fprintf(fp, "%s%s%s\n", pin, *note ? " " : "", note);
	if (fclose(fp) != 0)
		goto out;
	if (replace_file(path, buf, len) != 0) {
		log_warn("deny list %s", path);
		goto out;
	}
	rc = 1;
out:
	free(old);
	free(buf);
	close(lock);	/* drops the lock */
	return rc;
}

struct denylist_watch {
	struct event		*timer;
	char			*path;
	struct stat		 last;
	bool			 seen;
	void			(*changed)(size_t, void *);
	void			*arg;
};

static bool
same_stat(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int
watch_load(struct denylist_watch *w)
{
	char *errs = NULL, *line, *save = NULL;
	struct pin *keys;
	size_t n, len, added = 0, i;
	FILE *fp;
	int rc;

	if ((fp = open_memstream(&errs, &len)) == NULL)
		return -1;
	rc = denylist_load(w->path, &keys, &n, fp);
	fclose(fp);
	for (line = strtok_r(errs, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warnx("deny list: %s", line);
	free(errs);
	if (rc != 0)
		return -1;	/* the keys in use stay; tried again next tick */
	for (i = 0; i < n; i++)
		if (!trust_pin_match(deny, ndeny, &keys[i]))
			added++;
	if (w->seen)
		added_total += added;
	denylist_set(keys, n);
	if (added > 0 || !w->seen)
		log_info("deny list %s: %zu key%s", w->path, n,
		    n == 1 ? "" : "s");
	if (w->changed != NULL && w->seen)
		w->changed(added, w->arg);
	return 0;
}

static void
watch_tick(evutil_socket_t fd, short ev, void *arg)
{
	struct denylist_watch *w = arg;
	struct timeval tv = { 1, 0 };
	struct stat st;

	(void)fd;
	(void)ev;
	if (stat(w->path, &st) != 0)
		memset(&st, 0, sizeof(st));	/* gone: an empty list */
	if ((!w->seen || !same_stat(&st, &w->last)) && watch_load(w) == 0) {
		w->last = st;
		w->seen = true;
	}
	evtimer_add(w->timer, &tv);
}

struct denylist_watch *
denylist_watch_start(struct event_base *base, const char *path,
    void (*changed)(size_t, void *), void *arg)
{
	struct denylist_watch *w;

	if ((w = calloc(1, sizeof(*w))) == NULL ||
	    (w->path = strdup(path)) == NULL ||
	    (w->timer = evtimer_new(base, watch_tick, w)) == NULL) {
		if (w != NULL)
			free(w->path);
		free(w);
		return NULL;
	}
	w->changed = changed;
	w->arg = arg;
	watch_tick(-1, 0, w);
	return w;
}

void
denylist_watch_stop(struct denylist_watch *w)
{
	if (w == NULL)
		return;
	event_free(w->timer);
	free(w->path);
	free(w);
	denylist_set(NULL, 0);
}
