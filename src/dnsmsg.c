#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ldns/ldns.h>

#include "stubborn/dnsmsg.h"

#define DNS_FLAG_QR	0x80	/* in byte 2 */
#define DNS_FLAG_TC	0x02	/* in byte 2 */
#define DNS_FLAG_RD	0x01	/* in byte 2 */
#define DNS_FLAG_RA	0x80	/* in byte 3 */
#define DNS_FLAG_AD	0x20	/* in byte 3 */
#define DNS_FLAG_CD	0x10	/* in byte 3 */
#define DNS_TYPE_OPT	41
#define DNS_TYPE_IXFR	251
#define DNS_TYPE_AXFR	252
#define DNS_CLASS_NONE	254	/* meta-classes (RFC 6895 3.2) */
#define DNS_CLASS_ANY	255
#define DNS_EDNS_DO	0x8000
#define DNS_NAME_MAX	255
#define NAME_HOPS_MAX	16	/* compression pointers in one name */

const char *const dnsmsg_status_str[] = {
	[DNSMSG_OK] = "ok",
	[DNSMSG_DROP] = "drop",
	[DNSMSG_FORMERR] = "formerr",
	[DNSMSG_NOTIMP] = "notimp",
	[DNSMSG_BADVERS] = "badvers",
	[DNSMSG_REFUSED] = "refused",
};

static inline uint16_t
get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void
put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

long
dnsmsg_skip_name(const uint8_t *msg, size_t len, size_t off)
{
	size_t start = off;

	for (;;) {
		uint8_t l;

		if (off >= len)
			return -1;
		l = msg[off];
		if ((l & 0xc0) == 0xc0)
			return off + 2 <= len ? (long)(off + 2) : -1;
		if (l & 0xc0)
			return -1;	/* 0x40 and 0x80 label types are obsolete */
		off += 1 + (size_t)l;
		if (off - start > DNS_NAME_MAX)
			return -1;
		if (l == 0)
			return (long)off;
	}
}

/* Offset past the uncompressed name at off, or -1. */
static long
plain_name_end(const uint8_t *msg, size_t len, size_t off)
{
	size_t start = off;

	for (;;) {
		uint8_t l;

		if (off >= len || (msg[off] & 0xc0))
			return -1;
		l = msg[off];
		off += 1 + (size_t)l;
		if (off - start > DNS_NAME_MAX || off > len)
			return -1;
		if (l == 0)
			return (long)off;
	}
}

/* Whether an OPT's RDATA is a run of whole {code, length, data} options. */
static bool
options_whole(const uint8_t *p, size_t len)
{
	size_t off = 0;

	while (off < len) {
		if (len - off < 4 || len - off - 4 < get16(p + off + 2))
			return false;
		off += 4 + (size_t)get16(p + off + 2);
	}
	return true;
}

enum dnsmsg_status
dnsmsg_parse_query(const uint8_t *msg, size_t len, struct dnsmsg_info *info)
{
	uint16_t qd, an, ns, ar, i;
	size_t off = DNSMSG_HDR_LEN;
	long end;
	bool badvers = false, notimp;

	memset(info, 0, sizeof(*info));
	info->udp_size = DNSMSG_UDP_MIN;
	if (len < DNSMSG_HDR_LEN || (msg[2] & DNS_FLAG_QR))
		return DNSMSG_DROP;
	info->id = get16(msg);
	info->ad_bit = (msg[3] & DNS_FLAG_AD) != 0;
	/*
	 * Another opcode (NOTIMP), or other than one question (FORMERR), is
	 * not forwarded; the rest is still read for the client's OPT, which
	 * the answer must carry (RFC 6891 6.1.1).  Such questions may be
	 * compressed as any name; unreadable, the answer goes without.
	 */
	notimp = ((msg[2] >> 3) & 0x0f) != 0;
	qd = get16(msg + 4);
	for (i = 0; i < qd; i++) {
		end = qd == 1 && !notimp ? plain_name_end(msg, len, off) :
		    dnsmsg_skip_name(msg, len, off);
		if (end < 0 || (size_t)end + 4 > len)
			return notimp ? DNSMSG_NOTIMP : DNSMSG_FORMERR;
		off = (size_t)end + 4;
	}
	if (qd == 1 && !notimp) {
		info->qtype = get16(msg + off - 4);
		info->qclass = get16(msg + off - 2);
		info->qend = off;
	}

	an = get16(msg + 6);
	ns = get16(msg + 8);
	ar = get16(msg + 10);
	for (i = 0; i < (uint32_t)an + ns + ar; i++) {
		uint16_t type, rdlen;
		size_t owner = off;

		end = dnsmsg_skip_name(msg, len, off);
		if (end < 0 || (size_t)end + 10 > len)
			goto bad;
		off = (size_t)end;
		type = get16(msg + off);
		rdlen = get16(msg + off + 8);
		if (off + 10 + rdlen > len)
			goto bad;
		if (type == DNS_TYPE_OPT) {
			/*
			 * RFC 6891 6.1.1: one OPT, in the additional
			 * section, owned by the root, its options whole.
			 */
			if (info->edns || i < (uint32_t)an + ns ||
			    owner + 1 != off || !options_whole(msg + off + 10,
			    rdlen))
				goto bad;
			info->edns = true;
			info->udp_size = get16(msg + off + 2);
			if (info->udp_size < DNSMSG_UDP_MIN)
				info->udp_size = DNSMSG_UDP_MIN;
			info->do_bit = (get16(msg + off + 6) & DNS_EDNS_DO) != 0;
			/* Only version 0 exists; a later one is not ours. */
			badvers = msg[off + 5] != 0;
		}
		off += 10 + (size_t)rdlen;
	}
	if (notimp)
		return DNSMSG_NOTIMP;
	if (qd != 1)
		return DNSMSG_FORMERR;
	if (badvers)
		return DNSMSG_BADVERS;
	/*
	 * QCLASS ANY asks for every class at once (RFC 6895 3.2), which no
	 * forwarder can merge, and NONE belongs to UPDATE (RFC 2136).  An
	 * upstream may drop either (unbound does): the client would wait out
	 * its timeout, and the upstream would be counted as failing.
	 */
	if (info->qclass == DNS_CLASS_ANY || info->qclass == DNS_CLASS_NONE)
		return DNSMSG_NOTIMP;
	/*
	 * Zone transfers come from a zone's own servers (RFC 5936 4.2); a
	 * resolver refuses them (unbound does), and an upstream's refusal
	 * would count against it.
	 */
	if (info->qtype == DNS_TYPE_AXFR || info->qtype == DNS_TYPE_IXFR)
		return DNSMSG_REFUSED;
	return DNSMSG_OK;
bad:
	/* What broke may be the OPT itself: the answer goes without. */
	info->edns = false;
	info->do_bit = false;
	info->udp_size = DNSMSG_UDP_MIN;
	return notimp ? DNSMSG_NOTIMP : DNSMSG_FORMERR;
}

size_t
dnsmsg_error_reply(const uint8_t *query, size_t qlen,
    const struct dnsmsg_info *info, int rcode, uint8_t *out, size_t outsz)
{
	size_t n = info->qend ? info->qend : DNSMSG_HDR_LEN;
	/* info->edns only when the OPT itself was sound. */
	bool opt = info->edns;

	if (qlen < n || outsz < n + (opt ? 11 : 0))
		return 0;
	memcpy(out, query, n);
	out[2] = (uint8_t)(DNS_FLAG_QR | (query[2] & (0x78 | DNS_FLAG_RD)));
	out[3] = (uint8_t)(DNS_FLAG_RA | (rcode & 0x0f));
	put16(out + 4, info->qend ? 1 : 0);
	put16(out + 6, 0);
	put16(out + 8, 0);
	put16(out + 10, 0);
	if (opt) {
		out[n] = 0;
		put16(out + n + 1, DNS_TYPE_OPT);
		put16(out + n + 3, DNSMSG_EDNS_SIZE);
		out[n + 5] = (uint8_t)(rcode >> 4);
		out[n + 6] = 0;		/* version */
		put16(out + n + 7, info->do_bit ? DNS_EDNS_DO : 0);
		put16(out + n + 9, 0);
		put16(out + 10, 1);
		n += 11;
	}
	return n;
}

bool
dnsmsg_reply_matches(const uint8_t *reply, size_t rlen, const uint8_t *query,
    size_t qend)
{
	size_t off = DNSMSG_HDR_LEN;

	if (rlen < qend || qend <= DNSMSG_HDR_LEN + 4)
		return false;
	/* The opcode is copied into the response (RFC 1035 4.1.1). */
	if (!(reply[2] & DNS_FLAG_QR) || ((reply[2] ^ query[2]) & 0x78) ||
	    get16(reply + 4) != 1)
		return false;
	/*
	 * The query's name is known to be well formed, so walking its labels
	 * bounds the comparison; a label length differing in the reply ends
	 * it.  Name bytes compare without ASCII case (RFC 4343).
	 */
	while (query[off] != 0) {
		size_t l = query[off], i;

		if (reply[off] != l)
			return false;
		for (i = 1; i <= l; i++) {
			uint8_t a = query[off + i], b = reply[off + i];

			if (a >= 'A' && a <= 'Z')
				a += 'a' - 'A';
			if (b >= 'A' && b <= 'Z')
				b += 'a' - 'A';
			if (a != b)
				return false;
		}
		off += 1 + l;
	}
	return reply[off] == 0 && memcmp(reply + off + 1, query + off + 1, 4) == 0;
}

size_t
dnsmsg_upstream_query(const uint8_t *query, const struct dnsmsg_info *info,
    uint8_t *out)
{
	size_t n = info->qend, pad;

	memcpy(out, query, n);
	/*
	 * Of the client's flags only RD and CD go on, and AD is asked for
	 * whatever the client did (RFC 6840 5.7): the cached answer then
	 * holds the upstream's verdict, and each client is told it only if
	 * it asked (resolver.c).  The sections are the question and our OPT.
	 */
	out[2] &= DNS_FLAG_RD;
	out[3] = (uint8_t)((out[3] & DNS_FLAG_CD) | DNS_FLAG_AD);
	put16(out + 6, 0);
	put16(out + 8, 0);
	put16(out + 10, 1);
	out[n++] = 0;				/* root owner */
	put16(out + n, DNS_TYPE_OPT);
	put16(out + n + 2, 1232);		/* RFC 9715's safe size */
	out[n + 4] = 0;				/* extended rcode */
	out[n + 5] = 0;				/* version */
	put16(out + n + 6, info->do_bit ? DNS_EDNS_DO : 0);
	n += 8;
	pad = (DNSMSG_PAD_BLOCK - (n + 2 + 4) % DNSMSG_PAD_BLOCK) %
	    DNSMSG_PAD_BLOCK;
	put16(out + n, (uint16_t)(4 + pad));	/* RDLENGTH */
	put16(out + n + 2, 12);			/* Padding */
	put16(out + n + 4, (uint16_t)pad);
	memset(out + n + 6, 0, pad);
	return n + 6 + pad;
}

bool
dnsmsg_rr_first(struct dnsmsg_rr_iter *it, const uint8_t *msg, size_t len)
{
	long end;

	memset(it, 0, sizeof(*it));
	if (len < DNSMSG_HDR_LEN || get16(msg + 4) != 1 ||
	    (end = dnsmsg_skip_name(msg, len, DNSMSG_HDR_LEN)) < 0 ||
	    (size_t)end + 4 > len)
		return false;
	it->msg = msg;
	it->len = len;
	it->off = (size_t)end + 4;
	it->n[0] = get16(msg + 6);
	it->n[1] = get16(msg + 8);
	it->n[2] = get16(msg + 10);
	return true;
}

bool
dnsmsg_rr_next(struct dnsmsg_rr_iter *it, struct dnsmsg_rr *rr)
{
	const uint8_t *m = it->msg;
	long end;

	if (m == NULL || it->i >= it->n[0] + it->n[1] + it->n[2])
		return false;
	rr->start = it->off;
	if ((end = dnsmsg_skip_name(m, it->len, it->off)) < 0 ||
	    (size_t)end + 10 > it->len ||
	    (size_t)end + 10 + get16(m + end + 8) > it->len) {
		it->broken = true;
		return false;
	}
	rr->type_off = (size_t)end;
	rr->type = get16(m + end);
	rr->ttl = (uint32_t)get16(m + end + 4) << 16 | get16(m + end + 6);
	rr->end = (size_t)end + 10 + get16(m + end + 8);
	rr->section = it->i < it->n[0] ? 0 : it->i < it->n[0] + it->n[1] ?
	    1 : 2;
	it->off = rr->end;
	it->i++;
	return true;
}

/*
 * The response without its OPT record wherever it is: re-rendered by
 * ldns, which compresses anew, since records after it may be named by
 * pointers into them.  Returns the new length, 0 on failure.
 */
static size_t
drop_opt_slowly(uint8_t *msg, size_t len, size_t maxlen)
{
	ldns_pkt *pkt = NULL;
	ldns_rdf *opts;
	uint8_t *wire = NULL;
	size_t n = 0;

	if (ldns_wire2pkt(&pkt, msg, len) != LDNS_STATUS_OK)
		return 0;
	opts = ldns_pkt_edns_data(pkt);
	ldns_pkt_set_edns_udp_size(pkt, 0);
	ldns_pkt_set_edns_extended_rcode(pkt, 0);
	ldns_pkt_set_edns_version(pkt, 0);
	ldns_pkt_set_edns_z(pkt, 0);
	ldns_pkt_set_edns_data(pkt, NULL);
	ldns_rdf_deep_free(opts);
	/* ldns has no setter; the field is in its public struct. */
	pkt->_edns_present = 0;
	if (ldns_pkt2wire(&wire, pkt, &n) != LDNS_STATUS_OK || n > maxlen)
		n = 0;
	else
		memcpy(msg, wire, n);
	free(wire);
	ldns_pkt_free(pkt);
	return n;
}

/*
 * Replace the OPT found (NULL: none) with ours, or with none; *ours says
 * whether ours is now last.
 */
static size_t
set_opt(uint8_t *msg, size_t len, size_t maxlen, const struct dnsmsg_rr *found,
    bool edns, bool *ours)
{
	struct dnsmsg_rr opt = found != NULL ? *found : (struct dnsmsg_rr){ 0 };
	size_t n;

	*ours = false;
	if (found) {
		if (opt.end == len) {
			len = opt.start;
			put16(msg + 10, (uint16_t)(get16(msg + 10) - 1));
		} else if ((n = drop_opt_slowly(msg, len, maxlen)) > 0)
			len = n;
		else
			return len;	/* leave it as it came */
	}
	if (!edns || len + 11 > maxlen)
		return len;
	msg[len] = 0;
	put16(msg + len + 1, DNS_TYPE_OPT);
	put16(msg + len + 3, DNSMSG_EDNS_SIZE);
	/* Extended RCODE kept, version 0, only the DO flag. */
	msg[len + 5] = found ? (uint8_t)(opt.ttl >> 24) : 0;
	msg[len + 6] = 0;
	put16(msg + len + 7, found ? (uint16_t)(opt.ttl & DNS_EDNS_DO) : 0);
	put16(msg + len + 9, 0);
	put16(msg + 10, (uint16_t)(get16(msg + 10) + 1));
	*ours = true;
	return len + 11;
}

/* Whether msg ends in an OPT record the way set_opt writes one. */
static bool
own_opt_last(const uint8_t *m, size_t len)
{
	const uint8_t *o = m + len - 11;

	return len >= DNSMSG_HDR_LEN + 11 && get16(m + 10) >= 1 &&
	    o[0] == 0 && get16(o + 1) == DNS_TYPE_OPT &&
	    get16(o + 3) == DNSMSG_EDNS_SIZE && o[6] == 0 &&
	    (get16(o + 7) & ~DNS_EDNS_DO) == 0 && get16(o + 9) == 0;
}

size_t
dnsmsg_client_opt(uint8_t *msg, size_t len, size_t maxlen, bool edns)
{
	struct dnsmsg_rr_iter it;
	struct dnsmsg_rr rr, opt = { 0 };
	bool found = false, ours;

	/*
	 * What stubborn serves ends in its own OPT (dnsmsg_reply_normalize
	 * makes sure): kept as it is, or cut, with no walk.  Any other
	 * message is walked for its OPT.
	 */
	if (own_opt_last(msg, len)) {
		if (edns)
			return len;
		put16(msg + 10, (uint16_t)(get16(msg + 10) - 1));
		return len - 11;
	}
	if (!dnsmsg_rr_first(&it, msg, len))
		return len;
	while (dnsmsg_rr_next(&it, &rr)) {
		if (rr.section == 2 && rr.type == DNS_TYPE_OPT) {
			opt = rr;
			found = true;
		}
	}
	if (it.broken)
		return len;
	return set_opt(msg, len, maxlen, found ? &opt : NULL, edns, &ours);
}

/*
 * Whether the name at off reads as a client would read it: labels within
 * the message, every pointer to an offset before itself, a few pointers
 * at most (a chain of them costs a client a step each), 255 bytes at most
 * spelled out.  *end: just past the name's own bytes at off.
 */
static bool
name_ok(const uint8_t *m, size_t len, size_t off, size_t *end)
{
	size_t total = 0, hops = 0;

	*end = 0;
	for (;;) {
		size_t to;
		uint8_t l;

		if (off >= len)
			return false;
		if ((l = m[off]) == 0) {
			if (*end == 0)
				*end = off + 1;
			return true;
		}
		if ((l & 0xc0) == 0) {
			if ((total += 1 + (size_t)l) >= DNS_NAME_MAX)
				return false;
			off += 1 + (size_t)l;
			continue;
		}
		if ((l & 0xc0) != 0xc0 || off + 2 > len ||
		    ++hops > NAME_HOPS_MAX)
			return false;
		to = (size_t)(l & 0x3f) << 8 | m[off + 1];
		if (to >= off)
			return false;
		if (*end == 0)
			*end = off + 2;
		off = to;
	}
}

/*
 * The names in a record's RDATA, for the types whose RDATA holds names
 * (those RFC 3597 lets be compressed, and SRV and DNAME): well formed,
 * with the fixed fields, exactly filling RDLENGTH.  Other types' RDATA is
 * opaque here.
 */
static bool
rdata_ok(const uint8_t *m, const struct dnsmsg_rr *rr)
{
	size_t off = rr->type_off + 10, end, skip = 0, tail = 0;
	int names = 1;

	switch (rr->type) {
	case 2: case 3: case 4: case 5: case 7: case 8: case 9: case 12:
	case 39:	/* NS MD MF CNAME MB MG MR PTR DNAME */
		break;
	case 6:		/* SOA: two names, then five 32-bit fields */
		names = 2;
		tail = 20;
		break;
	case 14:	/* MINFO */
		names = 2;
		break;
	case 15:	/* MX: a preference, then a name */
		skip = 2;
		break;
	case 33:	/* SRV: priority, weight, port, then a name */
		skip = 6;
		break;
	default:
		return true;
	}
	off += skip;
	while (names-- > 0) {
		if (off >= rr->end || !name_ok(m, rr->end, off, &end))
			return false;
		off = end;
	}
	return off + tail == rr->end;
}

size_t
dnsmsg_reply_normalize(uint8_t *m, size_t len, size_t maxlen,
    uint32_t max_ttl)
{
	struct dnsmsg_rr_iter it;
	struct dnsmsg_rr rr, opt = { 0 };
	bool found = false, ours;

	if (!dnsmsg_rr_first(&it, m, len))
		return 0;
	while (dnsmsg_rr_next(&it, &rr)) {
		uint32_t ttl = rr.ttl;
		size_t end;

		if (!name_ok(m, len, rr.start, &end) || !rdata_ok(m, &rr))
			return 0;
		if (rr.type == DNS_TYPE_OPT) {
			if (found || rr.section != 2 ||
			    rr.type_off != rr.start + 1)
				return 0;
			opt = rr;
			found = true;
			continue;	/* its "TTL" is EDNS flags */
		}
		if (ttl > 0x7fffffff)
			ttl = 0;
		else if (ttl > max_ttl)
			ttl = max_ttl;
		if (ttl != rr.ttl) {
			put16(m + rr.type_off + 4, (uint16_t)(ttl >> 16));
			put16(m + rr.type_off + 6, (uint16_t)ttl);
		}
	}
	if (it.broken)
		return 0;
	dnsmsg_clear_aa(m);
	len = set_opt(m, len, maxlen, found ? &opt : NULL, true, &ours);
	/* Not so when ldns could not render it without the OPT, or no room. */
	return ours ? len : 0;
}

size_t
dnsmsg_truncate(uint8_t *msg, size_t len, size_t max)
{
	struct dnsmsg_rr_iter it;
	struct dnsmsg_rr rr;
	uint8_t opt[11];
	bool has_opt = false;
	size_t keep = DNSMSG_HDR_LEN;
	long end;

	if (len <= max || len < DNSMSG_HDR_LEN)
		return len;
	/* RFC 6891 7: the OPT record stays in a truncated response. */
	if (dnsmsg_rr_first(&it, msg, len)) {
		while (dnsmsg_rr_next(&it, &rr)) {
			if (rr.section == 2 && rr.type == DNS_TYPE_OPT &&
			    rr.type_off == rr.start + 1) {
				memcpy(opt, msg + rr.start, sizeof(opt));
				put16(opt + 9, 0);	/* without options */
				has_opt = true;
			}
		}
	}
	if (get16(msg + 4) == 1) {
		end = dnsmsg_skip_name(msg, len, DNSMSG_HDR_LEN);
		if (end > 0 && (size_t)end + 4 <= len &&
		    (size_t)end + 4 + (has_opt ? sizeof(opt) : 0) <= max)
			keep = (size_t)end + 4;
	}
	msg[2] |= DNS_FLAG_TC;
	put16(msg + 4, keep > DNSMSG_HDR_LEN ? 1 : 0);
	put16(msg + 6, 0);
	put16(msg + 8, 0);
	put16(msg + 10, 0);
	if (has_opt && keep + sizeof(opt) <= max) {
		memcpy(msg + keep, opt, sizeof(opt));
		keep += sizeof(opt);
		put16(msg + 10, 1);
	}
	return keep;
}

int
dnsmsg_rcode(const uint8_t *msg)
{
	return msg[3] & 0x0f;
}

const char *
dnsmsg_qname_str(const uint8_t *msg, size_t len, char *buf, size_t bufsz)
{
	ldns_rdf *name = NULL;
	size_t pos = DNSMSG_HDR_LEN;
	char *s;

	snprintf(buf, bufsz, "?");
	if (ldns_wire2dname(&name, msg, len, &pos) != LDNS_STATUS_OK)
		return buf;
	if ((s = ldns_rdf2str(name)) != NULL) {
		snprintf(buf, bufsz, "%s", s);
		free(s);
	}
	ldns_rdf_deep_free(name);
	return buf;
}
