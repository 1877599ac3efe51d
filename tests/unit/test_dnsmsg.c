/* Wire helpers: query checks, error answers, reply matching, truncation. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "stubborn/dnsmsg.h"

/* "www.Example.com. A IN", ID 0x1234, RD. */
static const uint8_t query_a[] = {
	0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	3, 'w', 'w', 'w', 7, 'E', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o',
	'm', 0, 0x00, 0x01, 0x00, 0x01,
};
#define QUERY_A_QEND	sizeof(query_a)

/* The same with an OPT record: 4096 bytes, DO set. */
static const uint8_t query_opt[] = {
	0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
	3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o',
	'm', 0, 0x00, 0x1c, 0x00, 0x01,
	0, 0x00, 0x29, 0x10, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00,
};

static void
parse_plain_query(void **state)
{
	struct dnsmsg_info info;

	(void)state;
	assert_int_equal(dnsmsg_parse_query(query_a, sizeof(query_a), &info),
	    DNSMSG_OK);
	assert_int_equal(info.id, 0x1234);
	assert_int_equal(info.qtype, 1);
	assert_int_equal(info.qclass, 1);
	assert_int_equal(info.qend, QUERY_A_QEND);
	assert_int_equal(info.udp_size, 512);
	assert_false(info.edns);
	assert_false(info.do_bit);
}

static void
parse_edns_query(void **state)
{
	struct dnsmsg_info info;

	(void)state;
	assert_int_equal(dnsmsg_parse_query(query_opt, sizeof(query_opt),
	    &info), DNSMSG_OK);
	assert_int_equal(info.qtype, 28);
	assert_true(info.edns);
	assert_true(info.do_bit);
	assert_int_equal(info.udp_size, 4096);
}

/* RFC 6891 6.1.3: an EDNS version above 0 is answered BADVERS. */
static void
parse_edns_version(void **state)
{
	uint8_t m[sizeof(query_opt)];
	struct dnsmsg_info info;

	(void)state;
	memcpy(m, query_opt, sizeof(m));
	m[sizeof(m) - 5] = 1;			/* the OPT's version */
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info),
	    DNSMSG_BADVERS);
	assert_true(info.edns);
	assert_true(info.do_bit);
	assert_int_equal(info.qend, sizeof(query_opt) - 11);
	/* A broken message is FORMERR first, whatever its version. */
	m[11] = 2;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info),
	    DNSMSG_FORMERR);
}

/*
 * QCLASS ANY with EDNS: NOTIMP, after FORMERR and BADVERS, and the answer
 * carries our OPT with DO echoed.
 */
static void
parse_meta_class_with_edns(void **state)
{
	uint8_t m[sizeof(query_opt)], out[DNSMSG_ERROR_MAX];
	const size_t qend = sizeof(query_opt) - 11;
	struct dnsmsg_info info;
	size_t n;

	(void)state;
	memcpy(m, query_opt, sizeof(m));
	m[qend - 1] = 255;			/* QCLASS ANY */
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info),
	    DNSMSG_NOTIMP);
	assert_true(info.edns);
	assert_true(info.do_bit);
	assert_int_equal(info.qend, qend);
	n = dnsmsg_error_reply(m, sizeof(m), &info, DNS_RCODE_NOTIMP, out,
	    sizeof(out));
	assert_int_equal(n, sizeof(m));
	assert_int_equal(dnsmsg_rcode(out), DNS_RCODE_NOTIMP);
	assert_memory_equal(out + 12, m + 12, qend - 12);	/* question */
	assert_int_equal(out[11], 1);
	assert_int_equal(out[n - 11 + 7], 0x80);		/* DO */
	/* An EDNS version above 0 is BADVERS first. */
	m[sizeof(m) - 5] = 1;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info),
	    DNSMSG_BADVERS);
	/* And a broken message FORMERR before either. */
	m[11] = 2;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info),
	    DNSMSG_FORMERR);
}

static void
parse_rejects(void **state)
{
	uint8_t m[sizeof(query_opt) + 300];
	struct dnsmsg_info info;
	size_t i;

	(void)state;
	/* Too short, or a response: not worth an answer. */
	assert_int_equal(dnsmsg_parse_query(query_a, 11, &info), DNSMSG_DROP);
	memcpy(m, query_a, sizeof(query_a));
	m[2] |= 0x80;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_DROP);

	/* Opcode STATUS. */
	memcpy(m, query_a, sizeof(query_a));
	m[2] = 0x10;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_NOTIMP);

	/* QCLASS NONE and ANY: no forwarder can merge every class. */
	memcpy(m, query_a, sizeof(query_a));
	m[sizeof(query_a) - 1] = 254;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_NOTIMP);
	m[sizeof(query_a) - 1] = 255;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_NOTIMP);
	assert_int_equal(info.qend, sizeof(query_a));	/* echoed question */
	m[sizeof(query_a) - 1] = 3;			/* CHAOS goes upstream */
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_OK);

	/* QDCOUNT 0 and 2. */
	memcpy(m, query_a, sizeof(query_a));
	m[5] = 0;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_FORMERR);
	m[5] = 2;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_FORMERR);

	/* Header only, though QDCOUNT says 1; and every shorter cut. */
	for (i = 12; i < sizeof(query_a); i++)
		assert_int_equal(dnsmsg_parse_query(query_a, i, &info),
		    DNSMSG_FORMERR);

	/* A compression pointer in the question. */
	memcpy(m, query_a, sizeof(query_a));
	m[12] = 0xc0;
	m[13] = 0x0c;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_FORMERR);

	/* An additional record announced but missing, or cut short. */
	memcpy(m, query_a, sizeof(query_a));
	m[11] = 1;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_a), &info),
	    DNSMSG_FORMERR);
	for (i = sizeof(query_a); i < sizeof(query_opt); i++)
		assert_int_equal(dnsmsg_parse_query(query_opt, i, &info),
		    DNSMSG_FORMERR);

	/* Two OPT records (RFC 6891 6.1.1). */
	memcpy(m, query_opt, sizeof(query_opt));
	memcpy(m + sizeof(query_opt), query_opt + sizeof(query_a),
	    sizeof(query_opt) - sizeof(query_a));
	m[11] = 2;
	assert_int_equal(dnsmsg_parse_query(m, 2 * sizeof(query_opt) -
	    sizeof(query_a), &info), DNSMSG_FORMERR);

	/* The OPT in the answer or authority section. */
	memcpy(m, query_opt, sizeof(query_opt));
	m[11] = 0;
	m[7] = 1;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_FORMERR);
	m[7] = 0;
	m[9] = 1;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_FORMERR);

	/* An OPT owned by another name than the root. */
	i = sizeof(query_a);
	memcpy(m, query_opt, i);
	m[i] = 1;
	m[i + 1] = 'x';
	m[i + 2] = 0;
	memcpy(m + i + 3, query_opt + i + 1, sizeof(query_opt) - i - 1);
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt) + 2, &info),
	    DNSMSG_FORMERR);

	/* Options: a length past the RDATA, a header cut short; whole ones. */
	memcpy(m, query_opt, sizeof(query_opt));
	m[sizeof(query_opt) - 1] = 8;
	memcpy(m + sizeof(query_opt), "\x00\x0a\x00\x20xxxx", 8);
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt) + 8, &info),
	    DNSMSG_FORMERR);
	m[sizeof(query_opt) - 1] = 3;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt) + 3, &info),
	    DNSMSG_FORMERR);
	m[sizeof(query_opt) - 1] = 8;
	m[sizeof(query_opt) + 3] = 4;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt) + 8, &info),
	    DNSMSG_OK);

	/* A name of more than 255 bytes. */
	memset(m, 0, sizeof(m));
	memcpy(m, query_a, 12);
	for (i = 0; i < 5; i++) {
		m[12 + i * 60] = 59;
		memset(m + 13 + i * 60, 'a', 59);
	}
	assert_int_equal(dnsmsg_parse_query(m, 12 + 300 + 5, &info),
	    DNSMSG_FORMERR);
}

static void
error_reply(void **state)
{
	struct dnsmsg_info info;
	uint8_t out[512];
	size_t n;

	(void)state;
	dnsmsg_parse_query(query_a, sizeof(query_a), &info);
	n = dnsmsg_error_reply(query_a, sizeof(query_a), &info,
	    DNS_RCODE_SERVFAIL, out, sizeof(out));
	assert_int_equal(n, QUERY_A_QEND);
	assert_int_equal(dnsmsg_get_id(out), 0x1234);
	assert_true(out[2] & 0x80);		/* QR */
	assert_true(out[2] & 0x01);		/* RD echoed */
	assert_int_equal(dnsmsg_rcode(out), DNS_RCODE_SERVFAIL);
	assert_int_equal(out[5], 1);
	assert_int_equal(out[11], 0);
	assert_memory_equal(out + 12, query_a + 12, QUERY_A_QEND - 12);
	assert_true(dnsmsg_reply_matches(out, n, query_a, QUERY_A_QEND));

	/*
	 * To an EDNS query, an OPT of ours (RFC 6891 6.1.1): our size,
	 * version 0, DO echoed, no options.
	 */
	dnsmsg_parse_query(query_opt, sizeof(query_opt), &info);
	n = dnsmsg_error_reply(query_opt, sizeof(query_opt), &info,
	    DNS_RCODE_REFUSED, out, sizeof(out));
	assert_int_equal(n, sizeof(query_opt));
	assert_int_equal(out[11], 1);
	assert_int_equal(dnsmsg_rcode(out), DNS_RCODE_REFUSED);
	{
		static const uint8_t opt[] = { 0, 0x00, 0x29, 0x04, 0xd0,
		    0, 0, 0x80, 0x00, 0x00, 0x00 };

		assert_memory_equal(out + n - 11, opt, sizeof(opt));
	}
	/* BADVERS: 16, so 0 in the header and 1 in the OPT. */
	n = dnsmsg_error_reply(query_opt, sizeof(query_opt), &info,
	    DNS_RCODE_BADVERS, out, sizeof(out));
	assert_int_equal(n, sizeof(query_opt));
	assert_int_equal(dnsmsg_rcode(out), 0);
	assert_int_equal(out[n - 11 + 5], 1);
	/* No room for the OPT: no answer rather than one without it. */
	assert_int_equal(dnsmsg_error_reply(query_opt, sizeof(query_opt),
	    &info, DNS_RCODE_REFUSED, out, sizeof(query_opt) - 1), 0);
	/* A 255-byte name and an OPT: the longest, DNSMSG_ERROR_MAX. */
	{
		uint8_t q[DNSMSG_HDR_LEN + 255 + 4 + 11], big[DNSMSG_ERROR_MAX];
		size_t off = DNSMSG_HDR_LEN, l;
		int k;

		memcpy(q, query_opt, DNSMSG_HDR_LEN);
		for (k = 0; k < 4; k++) {
			l = k < 3 ? 63 : 61;
			q[off] = (uint8_t)l;
			memset(q + off + 1, 'a', l);
			off += 1 + l;
		}
		q[off++] = 0;
		assert_int_equal(off, DNSMSG_HDR_LEN + 255);
		memcpy(q + off, query_opt + sizeof(query_opt) - 15, 15);
		assert_int_equal(dnsmsg_parse_query(q, sizeof(q), &info),
		    DNSMSG_OK);
		assert_int_equal(dnsmsg_error_reply(q, sizeof(q), &info,
		    DNS_RCODE_REFUSED, big, sizeof(big)), DNSMSG_ERROR_MAX);
		dnsmsg_parse_query(query_opt, sizeof(query_opt), &info);
	}
	/* FORMERR for a sound OPT keeps it (RFC 6891 6.1.1). */
	n = dnsmsg_error_reply(query_opt, sizeof(query_opt), &info,
	    DNS_RCODE_FORMERR, out, sizeof(out));
	assert_int_equal(n, sizeof(query_opt));
	assert_int_equal(out[11], 1);

	/* FORMERR for a query whose question did not parse: header only. */
	assert_int_equal(dnsmsg_parse_query(query_a, 20, &info),
	    DNSMSG_FORMERR);
	n = dnsmsg_error_reply(query_a, 20, &info, DNS_RCODE_FORMERR, out,
	    sizeof(out));
	assert_int_equal(n, 12);
	assert_int_equal(out[5], 0);
	assert_int_equal(dnsmsg_rcode(out), DNS_RCODE_FORMERR);

	/* Too small an output buffer. */
	assert_int_equal(dnsmsg_error_reply(query_a, sizeof(query_a), &info,
	    DNS_RCODE_FORMERR, out, 11), 0);
}

/*
 * RFC 6891 6.1.1: an answer to a query with an OPT carries one, whatever
 * was refused (another opcode, other than one question), unless the OPT
 * itself was the trouble.  Zone transfers are refused here.
 */
static void
error_answers_keep_the_opt(void **state)
{
	uint8_t m[128], out[DNSMSG_ERROR_MAX];
	const size_t qend = sizeof(query_opt) - 11;
	struct dnsmsg_info info;
	size_t n;

	(void)state;
	/* NOTIFY (opcode 4) with an OPT: NOTIMP, header and OPT. */
	memcpy(m, query_opt, sizeof(query_opt));
	m[2] = 4 << 3;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_NOTIMP);
	assert_true(info.edns);
	assert_int_equal(info.qend, 0);
	n = dnsmsg_error_reply(m, sizeof(query_opt), &info, DNS_RCODE_NOTIMP,
	    out, sizeof(out));
	assert_int_equal(n, DNSMSG_HDR_LEN + 11);
	assert_int_equal(out[5], 0);			/* no question */
	assert_int_equal(out[11], 1);			/* the OPT */
	assert_int_equal(out[DNSMSG_HDR_LEN + 2], 41);
	assert_int_equal(out[DNSMSG_HDR_LEN + 7] & 0x80, 0x80);	/* DO */
	assert_int_equal(dnsmsg_rcode(out), DNS_RCODE_NOTIMP);

	/* No question, an OPT: FORMERR with the OPT. */
	memcpy(m, query_opt, DNSMSG_HDR_LEN);
	m[5] = 0;
	memcpy(m + DNSMSG_HDR_LEN, query_opt + qend, 11);
	assert_int_equal(dnsmsg_parse_query(m, DNSMSG_HDR_LEN + 11, &info),
	    DNSMSG_FORMERR);
	assert_true(info.edns);
	n = dnsmsg_error_reply(m, DNSMSG_HDR_LEN + 11, &info,
	    DNS_RCODE_FORMERR, out, sizeof(out));
	assert_int_equal(n, DNSMSG_HDR_LEN + 11);
	assert_int_equal(out[11], 1);

	/* Two questions and an OPT: the same. */
	memcpy(m, query_opt, qend);
	memcpy(m + qend, query_opt + DNSMSG_HDR_LEN, qend - DNSMSG_HDR_LEN);
	memcpy(m + 2 * qend - DNSMSG_HDR_LEN, query_opt + qend, 11);
	m[5] = 2;
	assert_int_equal(dnsmsg_parse_query(m, 2 * qend - DNSMSG_HDR_LEN + 11,
	    &info), DNSMSG_FORMERR);
	assert_true(info.edns);
	assert_int_equal(info.qend, 0);

	/* The second question compressed, as libraries write it: the same. */
	memcpy(m, query_opt, qend);
	m[qend] = 0xc0;
	m[qend + 1] = DNSMSG_HDR_LEN;
	memcpy(m + qend + 2, query_opt + qend - 4, 4);
	memcpy(m + qend + 6, query_opt + qend, 11);
	m[5] = 2;
	assert_int_equal(dnsmsg_parse_query(m, qend + 6 + 11, &info),
	    DNSMSG_FORMERR);
	assert_true(info.edns);

	/* NOTIFY whose OPT is broken: NOTIMP, and the answer goes without. */
	memcpy(m, query_opt, sizeof(query_opt));
	m[2] = 4 << 3;
	m[qend + 10] = 5;	/* the OPT's RDLENGTH, past the end */
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_NOTIMP);
	assert_false(info.edns);

	/* Two OPTs: FORMERR, and the answer goes without. */
	memcpy(m, query_opt, sizeof(query_opt));
	memcpy(m + sizeof(query_opt), query_opt + qend, 11);
	m[11] = 2;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt) + 11, &info),
	    DNSMSG_FORMERR);
	assert_false(info.edns);
	n = dnsmsg_error_reply(m, sizeof(query_opt) + 11, &info,
	    DNS_RCODE_FORMERR, out, sizeof(out));
	assert_int_equal(n, qend);
	assert_int_equal(out[11], 0);

	/* AXFR and IXFR: REFUSED, question and OPT echoed. */
	memcpy(m, query_opt, sizeof(query_opt));
	m[qend - 3] = 252;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_REFUSED);
	n = dnsmsg_error_reply(m, sizeof(query_opt), &info,
	    DNS_RCODE_REFUSED, out, sizeof(out));
	assert_int_equal(n, sizeof(query_opt));
	assert_int_equal(out[5], 1);
	assert_int_equal(out[11], 1);
	m[qend - 3] = 251;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_REFUSED);
	/* Type 250 (TSIG) goes upstream as before. */
	m[qend - 3] = 250;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(query_opt), &info),
	    DNSMSG_OK);
}

/*
 * The client's AD is noted; upstream, only RD and CD of its flags go on,
 * and AD is always asked for (RFC 6840 5.7).
 */
static void
upstream_query_flags(void **state)
{
	uint8_t m[sizeof(query_opt)], up[DNSMSG_UPSTREAM_MAX];
	struct dnsmsg_info info;

	(void)state;
	memcpy(m, query_opt, sizeof(m));
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info), DNSMSG_OK);
	assert_false(info.ad_bit);
	m[2] = 0x01 | 0x02 | 0x04;	/* RD, and TC and AA, which are not */
	m[3] = 0x80 | 0x40 | 0x20 | 0x10 | 0x05;	/* RA Z AD CD, rcode */
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info), DNSMSG_OK);
	assert_true(info.ad_bit);
	dnsmsg_upstream_query(m, &info, up);
	assert_int_equal(up[2], 0x01);
	assert_int_equal(up[3], 0x20 | 0x10);
	m[2] = 0;
	m[3] = 0;
	assert_int_equal(dnsmsg_parse_query(m, sizeof(m), &info), DNSMSG_OK);
	dnsmsg_upstream_query(m, &info, up);
	assert_int_equal(up[2], 0);
	assert_int_equal(up[3], 0x20);
	assert_int_equal(dnsmsg_get_id(up), 0xabcd);
}

static void
reply_matching(void **state)
{
	uint8_t r[sizeof(query_a) + 16];

	(void)state;
	memcpy(r, query_a, sizeof(query_a));
	r[2] |= 0x80;
	assert_true(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	/* Case differs (0x20 randomisation): still the same question. */
	r[13] = 'W';
	r[17] = 'e';
	assert_true(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	/* Another name, type, class; a query, not a response; too short. */
	r[14] = 'x';
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	r[14] = 'w';
	r[sizeof(query_a) - 3] = 28;
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	r[sizeof(query_a) - 3] = 1;
	r[sizeof(query_a) - 1] = 3;
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	r[sizeof(query_a) - 1] = 1;
	assert_true(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a) - 1, query_a,
	    QUERY_A_QEND));
	r[2] &= 0x7f;
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	/* Another opcode (STATUS) than the query's, or any other bits. */
	r[2] |= 0x80 | (2 << 3);
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	r[2] &= (uint8_t)~0x78;
	r[2] |= 0x04;	/* AA: not the question's business */
	assert_true(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
	r[2] &= 0x7f;
	/* A label length that differs ends the comparison safely. */
	r[2] |= 0x80;
	r[12] = 60;
	assert_false(dnsmsg_reply_matches(r, sizeof(query_a), query_a,
	    QUERY_A_QEND));
}

static void
truncation(void **state)
{
	uint8_t r[1000];
	size_t n;

	(void)state;
	memset(r, 0xaa, sizeof(r));
	memcpy(r, query_a, sizeof(query_a));
	r[2] |= 0x80;
	r[7] = 20;	/* ANCOUNT, whatever follows */
	assert_int_equal(dnsmsg_truncate(r, 512, 512), 512);
	assert_false(r[2] & 0x02);
	n = dnsmsg_truncate(r, sizeof(r), 512);
	assert_int_equal(n, QUERY_A_QEND);
	assert_true(r[2] & 0x02);
	assert_int_equal(r[5], 1);
	assert_int_equal(r[7], 0);
	assert_true(dnsmsg_reply_matches(r, n, query_a, QUERY_A_QEND));
}

/* A response to query_a: one A record, OPT (with an option), one glue. */
static size_t
response_opt_first(uint8_t *m)
{
	static const uint8_t rest[] = {
		0xc0, 12, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 192, 0, 2, 1,
		0, 0, 41, 0x10, 0, 0x01, 0, 0x80, 0, 0, 8, 0, 8, 0, 4, 0, 1,
		24, 0,
		1, 'n', 0xc0, 16, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 192, 0,
		2, 53,
	};
	size_t n = sizeof(query_a);

	memcpy(m, query_a, n);
	m[2] |= 0x80;
	m[7] = 1;
	m[11] = 2;
	memcpy(m + n, rest, sizeof(rest));
	return n + sizeof(rest);
}

static void
client_opt(void **state)
{
	uint8_t m[512];
	size_t n = response_opt_first(m), k;
	struct dnsmsg_rr_iter it;
	struct dnsmsg_rr rr;
	int opts = 0, glue = 0;

	(void)state;
	/* OPT before the glue: cut out anyway, the glue's name intact. */
	k = dnsmsg_client_opt(m, n, sizeof(m), false);
	assert_true(k < n);
	assert_int_equal(m[11], 1);
	assert_true(dnsmsg_rr_first(&it, m, k));
	while (dnsmsg_rr_next(&it, &rr)) {
		opts += rr.type == 41;
		glue += rr.section == 2 && rr.type == 1;
	}
	assert_false(it.broken);
	assert_int_equal(opts, 0);
	assert_int_equal(glue, 1);
	/* For an EDNS client: one bare OPT, last, extended RCODE and DO. */
	n = response_opt_first(m);
	k = dnsmsg_client_opt(m, n, sizeof(m), true);
	assert_int_equal(m[11], 2);
	assert_int_equal(m[k - 11], 0);
	assert_int_equal(m[k - 10] << 8 | m[k - 9], 41);
	assert_int_equal(m[k - 6], 1);		/* extended RCODE */
	assert_int_equal(m[k - 4], 0x80);	/* DO */
	assert_int_equal(m[k - 2] << 8 | m[k - 1], 0);	/* no options */
}

static void
ttl_clamp_and_truncation_keep_opt(void **state)
{
	uint8_t m[512], c[512];
	size_t n = response_opt_first(m);
	struct dnsmsg_rr_iter it;
	struct dnsmsg_rr rr;

	size_t top = 0;

	(void)state;
	/* The first record's TTL with the top bit set: it means 0. */
	assert_true(dnsmsg_rr_first(&it, m, n));
	assert_true(dnsmsg_rr_next(&it, &rr));
	top = rr.start;
	m[rr.type_off + 4] = 0x80;
	m[rr.type_off + 7] = 5;
	m[2] |= 0x04;		/* AA */
	n = dnsmsg_reply_normalize(m, n, sizeof(m), 10);
	assert_true(n > 0);
	assert_int_equal(m[2] & 0x04, 0);
	assert_true(dnsmsg_rr_first(&it, m, n));
	while (dnsmsg_rr_next(&it, &rr))
		if (rr.type != 41)
			assert_int_equal(rr.ttl, rr.start == top ? 0 : 10);
	/* One OPT, ours, last (the upstream's came before the glue). */
	assert_int_equal(m[n - 10] << 8 | m[n - 9], 41);
	assert_int_equal(m[n - 2] << 8 | m[n - 1], 0);
	/* Served as it is to an EDNS client, without the OPT to others. */
	memcpy(c, m, n);
	assert_int_equal(dnsmsg_client_opt(c, n, sizeof(c), true), n);
	assert_memory_equal(c, m, n);
	assert_int_equal(dnsmsg_client_opt(c, n, sizeof(c), false), n - 11);
	assert_int_equal(c[11], m[11] - 1);
	assert_memory_equal(c + 12, m + 12, n - 23);
	/* Truncated for a small buffer: question and OPT stay. */
	n = dnsmsg_truncate(m, n, sizeof(query_a) + 11);
	assert_int_equal(n, sizeof(query_a) + 11);
	assert_true(m[2] & 0x02);
	assert_int_equal(m[11], 1);
	assert_int_equal(m[n - 10] << 8 | m[n - 9], 41);
}

/*
 * A reply to query_a of the records rr (n bytes, count records), its
 * length; *at: where the records start.
 */
static size_t
reply_of(uint8_t *m, const uint8_t *rr, size_t n, int count, size_t *at)
{
	memcpy(m, query_a, sizeof(query_a));
	m[2] |= 0x80;
	m[7] = (uint8_t)count;
	memcpy(m + sizeof(query_a), rr, n);
	*at = sizeof(query_a);
	return sizeof(query_a) + n;
}

static size_t
normalized(const uint8_t *rr, size_t n, int count)
{
	uint8_t m[512];
	size_t at, len = reply_of(m, rr, n, count, &at);

	return dnsmsg_reply_normalize(m, len, sizeof(m), 3600);
}

/* Offsets in a reply to query_a: the records start at 33. */
#define AT	33
#define EXAMPLE	16	/* "Example.com" in the question */

static void
reply_names(void **state)
{
	/* CNAME: owner -> question, target foo + -> Example.com. */
	static const uint8_t cname[] = {
		0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6,
		3, 'f', 'o', 'o', 0xc0, EXAMPLE,
	};
	/* SOA: two names, then five fields. */
	static const uint8_t soa[] = {
		0xc0, EXAMPLE, 0, 6, 0, 1, 0, 0, 0, 60, 0, 2 + 5 + 20,
		0xc0, EXAMPLE, 2, 'n', 's', 0xc0, EXAMPLE,
		0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5,
	};
	static const uint8_t mx[] = {
		0xc0, 12, 0, 15, 0, 1, 0, 0, 0, 60, 0, 4,
		0, 10, 0xc0, EXAMPLE,
	};
	uint8_t rr[256];
	size_t i;

	(void)state;
	assert_true(normalized(cname, sizeof(cname), 1) > 0);
	assert_true(normalized(soa, sizeof(soa), 1) > 0);
	assert_true(normalized(mx, sizeof(mx), 1) > 0);

	/* The CNAME's target pointing at itself, then forward. */
	memcpy(rr, cname, sizeof(cname));
	rr[sizeof(cname) - 1] = AT + sizeof(cname) - 2;
	assert_int_equal(normalized(rr, sizeof(cname), 1), 0);
	rr[sizeof(cname) - 1] = AT + sizeof(cname) + 4;
	assert_int_equal(normalized(rr, sizeof(cname), 1), 0);

	/* RDLENGTH one byte long (the byte is there), then one short. */
	memcpy(rr, cname, sizeof(cname));
	rr[11] = 7;
	rr[sizeof(cname)] = 0;
	assert_int_equal(normalized(rr, sizeof(cname) + 1, 1), 0);
	rr[11] = 5;
	assert_int_equal(normalized(rr, sizeof(cname) - 1, 1), 0);

	/* An SOA a byte short of its five fields. */
	memcpy(rr, soa, sizeof(soa));
	rr[11]--;
	assert_int_equal(normalized(rr, sizeof(soa) - 1, 1), 0);

	/*
	 * An owner whose first pointer goes back, into an opaque RDATA that
	 * points forward to that owner: a loop for whoever follows it.
	 */
	{
		static const uint8_t loop[] = {
			0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 4,
			1, 'a', 0xc0, AT + 16,
			0xc0, AT + 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4,
			192, 0, 2, 1,
		};

		assert_int_equal(normalized(loop, sizeof(loop), 2), 0);
	}

	/* A chain of pointers: 16 of them pass, 17 do not. */
	for (i = 0; i < 2; i++) {
		size_t hops = 16 + i, n = 0, k, len;

		memcpy(rr, cname, 12);
		rr[3] = 16;	/* TXT: opaque, holds the chain */
		rr[n + 11] = (uint8_t)(1 + 2 * (hops - 1));
		n = 12;
		rr[n++] = 0;		/* the root name */
		for (k = 1; k < hops; k++) {
			rr[n] = 0xc0;
			rr[n + 1] = (uint8_t)(AT + n - (k == 1 ? 1 : 2));
			n += 2;
		}
		len = n;
		memcpy(rr + n, "\xc0\x00\x00\x01\x00\x01\x00\x00\x00\x3c"
		    "\x00\x04\xc0\x00\x02\x01", 16);
		rr[n + 1] = (uint8_t)(AT + len - 2);
		n += 16;
		assert_int_equal(normalized(rr, n, 2) > 0, i == 0);
	}
}

static void
skip_name(void **state)
{
	static const uint8_t m[] = {
		1, 'a', 0, 0xc0, 0x00, 2, 'b', 0xc0, 0x00, 0x40,
	};

	(void)state;
	assert_int_equal(dnsmsg_skip_name(m, sizeof(m), 0), 3);
	assert_int_equal(dnsmsg_skip_name(m, sizeof(m), 3), 5);
	assert_int_equal(dnsmsg_skip_name(m, sizeof(m), 5), 9);
	assert_int_equal(dnsmsg_skip_name(m, 8, 5), -1);	/* cut pointer */
	assert_int_equal(dnsmsg_skip_name(m, sizeof(m), 9), -1);
	assert_int_equal(dnsmsg_skip_name(m, 2, 0), -1);
}

static void
qname_text(void **state)
{
	char buf[64];

	(void)state;
	assert_string_equal(dnsmsg_qname_str(query_a, sizeof(query_a), buf,
	    sizeof(buf)), "www.Example.com.");
	assert_string_equal(dnsmsg_qname_str(query_a, 14, buf, sizeof(buf)),
	    "?");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parse_plain_query),
		cmocka_unit_test(parse_edns_query),
		cmocka_unit_test(parse_edns_version),
		cmocka_unit_test(parse_meta_class_with_edns),
		cmocka_unit_test(parse_rejects),
		cmocka_unit_test(error_reply),
		cmocka_unit_test(error_answers_keep_the_opt),
		cmocka_unit_test(upstream_query_flags),
		cmocka_unit_test(reply_matching),
		cmocka_unit_test(truncation),
		cmocka_unit_test(client_opt),
		cmocka_unit_test(ttl_clamp_and_truncation_keep_opt),
		cmocka_unit_test(reply_names),
		cmocka_unit_test(skip_name),
		cmocka_unit_test(qname_text),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
