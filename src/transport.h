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

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "stubborn/tls.h"

struct upstream;
struct conn;
struct conn_io;
struct txq_list;

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
	/* Failed with its conn, awaiting its callback (conn_report). */
	struct txq_list	*orphans;
	uint8_t		*msg;		/* borrowed; bytes 0-1 rewritten */
	size_t		 len;
	size_t		 qend;		/* question end, for reply matching */
	uint16_t	 wire_id;
};
TAILQ_HEAD(txq_list, txq);

/*
 * What every connection has (transports embed it first): the TLS
 * connection with its gate, and the walk through the bootstrap addresses.
 * transport.c holds what both transports do with it.
 */
struct conn {
	const struct transport_ops *ops;
	struct upstream		*up;	/* borrowed; outlives the conn */
	enum conn_state		 state;
	struct event_base	*base;
	struct bufferevent	*bev;
	struct tls_gate		 gate;
	struct event		*timer;	/* connect timeout, then the transport's */
	struct event		*tick;	/* reads what coalescing held back */
	bool			 coalescing;	/* SO_RCVLOWAT raised */
	bool			 served;	/* answered a query, or (GOAWAY)
					   promised to */
	unsigned		 addr_idx;
	unsigned		 addrs_left;
	char			 addrstr[64];
	char			 why[128];	/* the last failure, in words */
	const struct conn_io	*io;
	void			(*free_fn)(struct conn *);	/* conn_stop */
	TAILQ_ENTRY(conn)	 pool_entry;	/* every live conn of the pool */
};

/*
 * A transport's part in the shared connection code.  conn_event_cb and
 * conn_timo_cb drive connecting, then hand over to these.
 */
struct conn_io {
	const unsigned char	*alpn;	/* wire-format list, or NULL */
	unsigned		 alpn_len;
	bufferevent_data_cb	 read;	/* arg is the conn */
	/* After the gate passed: may the conn be used?  (sets why) */
	bool			(*usable)(struct conn *);
	/* READY: start sending. */
	void			(*started)(struct conn *);
	/* End the conn with outcome, failing its queries over. */
	void			(*fail)(struct conn *, enum conn_outcome);
	/* Any query attached? */
	bool			(*busy)(const struct conn *);
	/* How many queries were written and await their answer? */
	size_t			(*inflight)(const struct conn *);
	/* The timer fired while READY (idle, liveness). */
	void			(*idle)(struct conn *);
};

/* The bufferevent event callback of every conn (arg is the conn). */
void	conn_event_cb(struct bufferevent *bev, short events, void *arg);

/*
 * Set up c for up and start connecting to its next bootstrap address.  A
 * synchronous failure comes back through io->timo, so the caller never
 * sees its conn fail before this returns.  -1 only when out of memory.
 */
int	conn_start(struct conn *c, const struct transport_ops *ops,
	    struct upstream *up, struct event_base *base,
	    const struct conn_io *io);


/* Arm c's timer in ms. */
void	conn_timer(struct conn *c, long ms);

/*
 * Stop c's I/O and timer (state CLOSED).  Once the callback that got here
 * has unwound, the gate and timer are released and free_fn frees the
 * rest; the conn must not be touched after that.
 */
void	conn_stop(struct conn *c, void (*free_fn)(struct conn *));

/*
 * Report the end of c to the pool (with the incident record when the
 * gate refused), then fail each query of orphans over.
 */
void	conn_report(struct conn *c, enum conn_outcome outcome,
	    struct txq_list *orphans);

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

/*
 * The pool keeps every live conn, draining ones too, so that it can close
 * them all when it is freed.  conn_start and conn_stop call these.
 */
void	upstream_conn_add(struct conn *c);
void	upstream_conn_remove(struct conn *c);

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
