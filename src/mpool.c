#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "stubborn/mpool.h"

#define STEP		32		/* bytes between size classes */
#define CLASSES		32		/* so blocks of up to 1 KiB are kept */
#define KEEP_BYTES	(128 * 1024)	/* kept per class, at most */

/* In front of every block: its class, 0 for one from malloc alone. */
union hdr {
	size_t		cls;
	max_align_t	align;
};

/* A kept block links through its first bytes. */
struct link {
	struct link	*next;
};

static struct {
	struct link	*head;
	size_t		 n;
} lists[CLASSES + 1];

#ifdef MPOOL_PASSTHROUGH

void *
mpool_alloc(size_t n)
{
	return malloc(n ? n : 1);
}

void *
mpool_calloc(size_t nmemb, size_t size)
{
	if (size != 0 && nmemb > SIZE_MAX / size)
		return NULL;	/* as below; ASan would abort */
	if (nmemb == 0 || size == 0)
		nmemb = size = 1;
	return calloc(nmemb, size);
}

void *
mpool_realloc(void *p, size_t n)
{
	return realloc(p, n ? n : 1);
}

void
mpool_free(void *p)
{
	free(p);
}

bool
mpool_openssl(void)
{
	return true;
}

#else

static inline size_t
class_of(size_t n)
{
	return n <= STEP ? 1 : (n + STEP - 1) / STEP;
}

void *
mpool_alloc(size_t n)
{
	union hdr *h;
	size_t c;

	if (n > CLASSES * STEP) {
		if (n > SIZE_MAX - sizeof(*h) ||
		    (h = malloc(sizeof(*h) + n)) == NULL)
			return NULL;
		h->cls = 0;
		return h + 1;
	}
	c = class_of(n);
	if (lists[c].head != NULL) {
		struct link *l = lists[c].head;

		lists[c].head = l->next;
		lists[c].n--;
		return l;
	}
	if ((h = malloc(sizeof(*h) + c * STEP)) == NULL)
		return NULL;
	h->cls = c;
	return h + 1;
}

void *
mpool_calloc(size_t nmemb, size_t size)
{
	void *p;

	if (size != 0 && nmemb > SIZE_MAX / size)
		return NULL;
	if ((p = mpool_alloc(nmemb * size)) != NULL)
		memset(p, 0, nmemb * size);
	return p;
}

void
mpool_free(void *p)
{
	union hdr *h;
	size_t c;

	if (p == NULL)
		return;
	h = (union hdr *)p - 1;
	c = h->cls;
	if (c == 0 || lists[c].n >= KEEP_BYTES / (c * STEP)) {
		free(h);
		return;
	}
	((struct link *)p)->next = lists[c].head;
	lists[c].head = p;
	lists[c].n++;
}

void *
mpool_realloc(void *p, size_t n)
{
	union hdr *h;
	size_t have;
	void *q;

	if (p == NULL)
		return mpool_alloc(n);
	h = (union hdr *)p - 1;
	if (h->cls == 0 && n > CLASSES * STEP) {
		if (n > SIZE_MAX - sizeof(*h) ||
		    (h = realloc(h, sizeof(*h) + n)) == NULL)
			return NULL;
		return h + 1;
	}
	have = h->cls * STEP;	/* a large block is larger than n here */
	if (h->cls != 0 && n <= have)
		return p;
	if ((q = mpool_alloc(n)) == NULL)
		return NULL;
	memcpy(q, p, h->cls == 0 ? n : have);
	mpool_free(p);
	return q;
}

/* OpenSSL's own allocator returns NULL for 0 bytes and frees on realloc
 * to 0; its callers are written for that. */
static void *
ossl_alloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return n == 0 ? NULL : mpool_alloc(n);
}

static void *
ossl_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	if (n == 0) {
		mpool_free(p);
		return NULL;
	}
	return mpool_realloc(p, n);
}

static void
ossl_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	mpool_free(p);
}

bool
mpool_openssl(void)
{
	return CRYPTO_set_mem_functions(ossl_alloc, ossl_realloc,
	    ossl_free) == 1;
}

#endif

size_t
mpool_cached(size_t *bytes)
{
	size_t c, n = 0, b = 0;

	for (c = 1; c <= CLASSES; c++) {
		n += lists[c].n;
		b += lists[c].n * c * STEP;
	}
	if (bytes != NULL)
		*bytes = b;
	return n;
}
