/*
 * Client-facing sockets: UDP and TCP (RFC 7766 framing) on every listen
 * address, the allow list, and writing answers back.
 */
#ifndef STUBBORN_LISTENER_H
#define STUBBORN_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "stubborn/config.h"

struct listener;
struct resolver;
struct tcp_client;

/* Where an answer goes.  Copy it with listener_client_copy. */
struct client {
	int			 udp_fd;	/* -1 for TCP */
	struct tcp_client	*tc;		/* counted reference, or NULL */
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
};

/*
 * Bind every listen address of cfg (borrowed for the listener's life)
 * and hand queries to r.  Returns NULL (logged) when a configured address
 * cannot be bound.
 */
struct listener *listener_new(struct event_base *base,
	    const struct config *cfg, struct resolver *r);

/*
 * Judge clients by cfg's allow list from now on (cfg borrowed; the
 * sockets stay as they were bound).
 */
void	listener_set_config(struct listener *l, const struct config *cfg);

/* Stop accepting and reading; answers can still be written. */
void	listener_stop(struct listener *l);

/* True while a TCP client has answers not yet written out. */
bool	listener_busy(const struct listener *l);

/* Close every socket and free l; NULL is a no-op. */
void	listener_free(struct listener *l);

/* Number of listening sockets (UDP and TCP). */
size_t	listener_count(const struct listener *l);

/*
 * Send msg (len bytes, modified: a UDP answer over udp_size is truncated
 * with TC set) to client c.  A client gone meanwhile is skipped.
 */
void	listener_answer(const struct client *c, uint8_t *msg, size_t len,
	    uint16_t udp_size);

/* Take a second reference to src's TCP connection into dst. */
void	listener_client_copy(struct client *dst, const struct client *src);

/* Drop c's reference. */
void	listener_client_release(struct client *c);

#endif
