/*
 * DNS wire helpers for the hot path: header and question only, no
 * allocation.  Everything here takes borrowed buffers.
 */
#ifndef STUBBORN_DNSMSG_H
#define STUBBORN_DNSMSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNSMSG_HDR_LEN		12
#define DNSMSG_MAX_LEN		65535
#define DNSMSG_UDP_MIN		512	/* RFC 1035 limit without EDNS */

#define DNS_RCODE_NOERROR	0
#define DNS_RCODE_FORMERR	1
#define DNS_RCODE_SERVFAIL	2
#define DNS_RCODE_NXDOMAIN	3
#define DNS_RCODE_NOTIMP	4
#define DNS_RCODE_REFUSED	5
#define DNS_RCODE_BADVERS	16	/* extended: its upper bits in the OPT */

#define DNS_CLASS_IN		1

enum dnsmsg_status {
	DNSMSG_OK,		/* a query we can forward */
	DNSMSG_DROP,		/* not worth an answer (too short, a response) */
	DNSMSG_FORMERR,		/* answer FORMERR */
	DNSMSG_NOTIMP,		/* answer NOTIMP (opcode, class ANY or NONE) */
	DNSMSG_BADVERS,		/* answer BADVERS (EDNS version above 0) */
	DNSMSG_REFUSED,		/* answer REFUSED (a zone transfer) */
};
extern const char *const dnsmsg_status_str[];

/* What the listener and resolver need to know of a client's query. */
struct dnsmsg_info {
	uint16_t	id;
	uint16_t	qtype;
	uint16_t	qclass;
	size_t		qend;		/* offset just past the question, 0 if none */
	uint16_t	udp_size;	/* largest UDP answer the client takes */
	bool		edns;		/* a sound OPT record was present */
	bool		do_bit;
	bool		ad_bit;		/* the header's AD: it takes AD back */
};

/*
 * Check a client's query of len bytes and fill *info.  Only a single
 * question, uncompressed, and well-formed record sections are accepted.
 * First reason wins: NOTIMP for another opcode than QUERY, FORMERR for
 * other than one question or a malformed message, BADVERS, NOTIMP for
 * class ANY or NONE, REFUSED for AXFR and IXFR.  Whatever the status,
 * info->edns (with do_bit and udp_size) says the client's OPT was sound,
 * so an error answer can carry one; info->qend is 0 unless the message
 * is a QUERY with one question.
 */
enum dnsmsg_status dnsmsg_parse_query(const uint8_t *msg, size_t len,
	    struct dnsmsg_info *info);

/*
 * Offset just past the wire name that starts at off, following no
 * pointers (a pointer ends the name); -1 when it runs off the message or
 * is longer than 255 bytes.
 */
long	dnsmsg_skip_name(const uint8_t *msg, size_t len, size_t off);

/*
 * Write into out (outsz bytes) an answer with rcode to the query in
 * query/info, echoing its ID, RD bit and (when info->qend) its question.
 * When info->edns (a sound OPT; dnsmsg_parse_query clears it when the
 * OPT was what broke), an OPT record of ours follows (RFC 6891 6.1.1),
 * with the rcode's upper bits and the DO bit echoed.  Works for a query that only parsed as far as its header.
 * Returns the answer's length, 0 if out is too small.
 */
/* The longest such answer: header, a 255-byte name's question, OPT. */
#define DNSMSG_ERROR_MAX	(DNSMSG_HDR_LEN + 255 + 4 + 11)
size_t	dnsmsg_error_reply(const uint8_t *query, size_t qlen,
	    const struct dnsmsg_info *info, int rcode, uint8_t *out,
	    size_t outsz);

/*
 * True when reply (rlen bytes) is a response with the query's opcode
 * whose single question equals the question of query (which ends at
 * qend): same name ignoring ASCII case, type and class.
 */
bool	dnsmsg_reply_matches(const uint8_t *reply, size_t rlen,
	    const uint8_t *query, size_t qend);

/*
 * Judge an upstream's reply (len bytes, room for maxlen) and put it in
 * the one form stubborn caches and serves, in one walk.  Well formed:
 * every record the header counts is there, none runs past its end, each
 * owner name's compression pointer points back (one forward or at itself
 * is how a loop starts), and an OPT, if any, is one, in the additional
 * section, owned by the root; a reply that is not would reach clients that
 * cannot read it.  The form: every TTL at most max_ttl, one with the top
 * bit set 0 (RFC 2181 8); AA cleared; and one OPT of ours, last (see
 * dnsmsg_client_opt, which then needs no walk).  Returns the new length,
 * 0 for a malformed reply (msg then partly rewritten).
 */
size_t	dnsmsg_reply_normalize(uint8_t *msg, size_t len, size_t maxlen,
	    uint32_t max_ttl);

/*
 * Cut a response to fit max bytes (RFC 1035 4.2.1): keep the header and
 * question, set TC, empty the other sections.  Returns the new length;
 * the message is unchanged when it already fits.
 */
size_t	dnsmsg_truncate(uint8_t *msg, size_t len, size_t max);

#define DNSMSG_PAD_BLOCK	128	/* RFC 8467 4.1: queries pad to 128 */
#define DNSMSG_UPSTREAM_MAX	(DNSMSG_HDR_LEN + 255 + 4 + 11 + 4 + \
				 DNSMSG_PAD_BLOCK)

/*
 * The query to send upstream for the client's query (its question ending
 * at info->qend): its ID and question, of its flags RD and CD, AD always
 * (RFC 6840 5.7: the upstream then says what it validated), and one
 * OPT record of our own with the client's DO bit and a Padding option
 * (RFC 7830) that makes the length a multiple of DNSMSG_PAD_BLOCK.  The
 * client's other EDNS options, Client Subnet among them, stay behind.
 * Returns the length written to out (at least DNSMSG_UPSTREAM_MAX bytes).
 */
size_t	dnsmsg_upstream_query(const uint8_t *query,
	    const struct dnsmsg_info *info, uint8_t *out);

/* One resource record, as dnsmsg_rr_next finds it. */
struct dnsmsg_rr {
	size_t		start;		/* owner name */
	size_t		type_off;	/* TYPE; TTL at +4, RDLENGTH at +8 */
	size_t		end;		/* just past RDATA */
	uint16_t	type;
	uint32_t	ttl;
	int		section;	/* 0 answer, 1 authority, 2 additional */
};

/* Walks the records after a message's single question. */
struct dnsmsg_rr_iter {
	const uint8_t	*msg;
	size_t		 len;
	size_t		 off;
	unsigned	 i;
	unsigned	 n[3];
	bool		 broken;	/* stopped on a malformed record */
};

/* Start at the first record; false when the question does not parse. */
bool	dnsmsg_rr_first(struct dnsmsg_rr_iter *it, const uint8_t *msg,
	    size_t len);

/* The next record into *rr; false at the end (or it->broken). */
bool	dnsmsg_rr_next(struct dnsmsg_rr_iter *it, struct dnsmsg_rr *rr);

#define DNSMSG_EDNS_SIZE	1232	/* what we advertise (RFC 9715) */

/*
 * Give a response (len bytes, room for maxlen) the EDNS its client should
 * see: none when the client sent no OPT; else one OPT of ours, last, with
 * the response's extended RCODE and DO bit and no options, so what an
 * upstream added (Client Subnet, padding, cookies) stays behind.  Returns
 * the new length.
 */
size_t	dnsmsg_client_opt(uint8_t *msg, size_t len, size_t maxlen,
	    bool edns);

/* The response code of a message of at least DNSMSG_HDR_LEN bytes. */
int	dnsmsg_rcode(const uint8_t *msg);

static inline uint16_t
dnsmsg_get_id(const uint8_t *msg)
{
	return (uint16_t)(msg[0] << 8 | msg[1]);
}

static inline void
dnsmsg_set_id(uint8_t *msg, uint16_t id)
{
	msg[0] = (uint8_t)(id >> 8);
	msg[1] = (uint8_t)id;
}

/* The class of msg's question, which ends at qend. */
static inline uint16_t
dnsmsg_qclass(const uint8_t *msg, size_t qend)
{
	return (uint16_t)(msg[qend - 2] << 8 | msg[qend - 1]);
}

/* RA: recursion is available here (RFC 1035 4.1.1), whatever upstream. */
static inline void
dnsmsg_set_ra(uint8_t *msg)
{
	msg[3] |= 0x80;
}

/* AD off, for a client that did not ask for it (RFC 6840 5.8). */
static inline void
dnsmsg_clear_ad(uint8_t *msg)
{
	msg[3] &= (uint8_t)~0x20;
}

/* A forwarder and cache speaks for no zone: AA off (RFC 1035 4.1.1). */
static inline void
dnsmsg_clear_aa(uint8_t *msg)
{
	msg[2] &= (uint8_t)~0x04;
}

/*
 * The question's name as text (e.g. "example.com."), for logs; buf holds
 * it (bufsz bytes).  Returns buf, "?" when the name does not parse.
 */
const char *dnsmsg_qname_str(const uint8_t *msg, size_t len, char *buf,
	    size_t bufsz);

#endif
