/*
 * The seam between the upstream pool and a transport (DoT today, DoH
 * next).  A transport owns its connections; the pool owns the upstreams;
 * the resolver owns each query and lends the transport its txq.
 */
#ifndef STUBBORN_TRANSPORT_H
#define STUBBORN_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>

struct upstream;
struct conn;

enum conn_state {
	CONN_CONNECTING,	/* TCP connect and TLS handshake, gate inside */
	CONN_READY,		/* gate passed: query bytes may be written */
	CONN_CLOSED,		/* failed or closed; freed once unwound */
};
extern const char *const conn_state_str[];

/* How a connection ended, as the pool needs to judge the upstream. */
enum conn_outcome {
	CONN_READY_OK,		/* the gate passed */
	CONN_FAILED,		/* connect, handshake or I/O failure */
	CONN_INCIDENT,		/* the gate refused the certificate */
	CONN_REPORT_ONLY,	/* the gate would refuse it; ct = report */
	CONN_CLOSED_IDLE,	/* closed with nothing in flight */
	CONN_CLOSED_BUSY,	/* peer closed with queries in flight */
	CONN_DRAINING,		/* takes no new queries (HTTP/2 GOAWAY) */
};
extern const char *const conn_outcome_str[];

/*
 * A query as a transport sees it.  Embedded in the resolver's query; the
 * transport links it into its own lists while it is attached.
 */
struct txq {
	TAILQ_ENTRY(txq) entry;		/* conn's waiting or in-flight list */
	struct txq	*hnext;		/* DoT: conn's in-flight hash chain */
	void		*tdata;		/* DoH: the stream it rides on */
	struct conn	*conn;		/* NULL while not attached */
	uint8_t		*msg;		/* borrowed; bytes 0-1 rewritten */
	size_t		 len;
	size_t		 qend;		/* question end, for reply matching */
	uint16_t	 wire_id;
};
TAILQ_HEAD(txq_list, txq);

/* Fields every connection starts with (transports embed it first). */
struct conn {
	const struct transport_ops *ops;
	struct upstream	*up;		/* borrowed; outlives the conn */
	enum conn_state	 state;
};

struct transport_ops {
	const char	*name;
	/* Start connecting to up; NULL on a local failure (logged). */
	struct conn	*(*open)(struct upstream *up, struct event_base *base);
	/*
	 * Attach q: written at once when READY, queued until then.  Never
	 * fails synchronously; a failure comes back through the pool.
	 */
	void		 (*send)(struct conn *c, struct txq *q);
	/* Detach q (its reply, if any arrives, is discarded). */
	void		 (*cancel)(struct conn *c, struct txq *q);
	/*
	 * Close c; attached queries are detached without callbacks.  c is
	 * freed once the current callback has unwound.
	 */
	void		 (*close)(struct conn *c);
};

extern const struct transport_ops dot_ops;
extern const struct transport_ops doh_ops;

/*
 * Back into the pool (upstream.c).  upstream_conn_event reports a
 * connection's outcome; for CONN_INCIDENT, json is the incident record
 * (borrowed).  After FAILED, INCIDENT or CLOSED_* the conn is detached
 * from the upstream and every query it held is reported through
 * upstream_txq_failed.  upstream_txq_reply hands over a matched reply
 * (borrowed for the call).
 */
void	upstream_conn_event(struct conn *c, enum conn_outcome outcome,
	    const char *json);

struct tls_gate;

/*
 * Once a handshake has finished: CONN_READY_OK, CONN_REPORT_ONLY (usable,
 * but the incident must be logged), CONN_INCIDENT or CONN_FAILED (the
 * gate never ran).
 */
enum conn_outcome upstream_gate_outcome(struct tls_gate *gate);

/*
 * The incident record of a gate that refused (or only reported) the
 * certificate of up at addrstr; free() it.  NULL when out of memory.
 */
char	*upstream_incident_json(const struct upstream *up,
	    const char *addrstr, const struct tls_gate *gate);
void	upstream_txq_reply(struct conn *c, struct txq *q, uint8_t *msg,
	    size_t len);
void	upstream_txq_failed(struct conn *c, struct txq *q,
	    enum conn_outcome why);

#endif
