/*
 * Sockets for the control plane (lib/cluster/): address parsing, listen/connect, and sends and
 * receives that always end by a deadline. Every socket is non-blocking and close-on-exec; sends
 * use MSG_NOSIGNAL so a dead peer never raises SIGPIPE.
 */
#ifndef SPK_CLUSTER_NET_H
#define SPK_CLUSTER_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cluster/proto.h"
#include "sparkinfer/sparkinfer.h"

#define SPK_NET_ADDR_CAP 272

/* Monotonic clock in milliseconds. */
int64_t spk_net_now_ms(void);

/* Split "host:port", "[v6addr]:port" into host and port (1..65535). INVALID_ARG names the text. */
spk_status spk_net_split_hostport(const char *s, char *host, size_t host_cap, char *port,
                                  size_t port_cap);

/* 1 if every address `host` resolves to is a loopback address; 0 otherwise or if unresolvable. */
int spk_net_is_loopback(const char *host);

/* "1.2.3.4:5678" or "[::1]:5678" of a socket address. */
void spk_net_addr_str(const struct sockaddr *sa, socklen_t len, char *out, size_t cap);

/* Numeric local address (no port) of a connected socket; "" on failure. */
void spk_net_local_host(int fd, char *out, size_t cap);

/* Listen on host:port (SO_REUSEADDR, non-blocking). IO names the address and errno text. */
spk_status spk_net_listen(const char *host, const char *port, int *fd_out);

/*
 * One connect attempt to host:port that ends by `deadline_ms` (monotonic). IO with the errno
 * text if refused/unreachable, TIMEOUT if the deadline passed. The socket is non-blocking with
 * TCP_NODELAY.
 */
spk_status spk_net_connect(const char *host, const char *port, int64_t deadline_ms, int *fd_out);

/* Prepare an accepted socket: non-blocking, close-on-exec, TCP_NODELAY. */
void spk_net_prepare(int fd);

/*
 * Send all `n` bytes by `deadline_ms`. PEER_LOST if the peer closed or reset, TIMEOUT if the
 * deadline passed (part of the bytes may have been sent), IO otherwise.
 */
spk_status spk_net_send_all(int fd, const void *buf, size_t n, int64_t deadline_ms);

/* Receive exactly `n` bytes by `deadline_ms`. PEER_LOST on EOF or reset, TIMEOUT, IO. */
spk_status spk_net_recv_all(int fd, void *buf, size_t n, int64_t deadline_ms);

/*
 * Receive one whole frame by `deadline_ms`: header (validated), then the payload into
 * *payload (malloc'd, caller frees; NULL for an empty payload), decoded into *m (pointers into
 * *payload). Errors as spk_net_recv_all plus FORMAT for a malformed frame.
 */
spk_status spk_net_recv_frame(int fd, int64_t deadline_ms, spk_proto_msg *m, uint8_t **payload);

/* Encode `m` (its h.seq and h.flags as given) and send it by `deadline_ms`. */
spk_status spk_net_send_msg(int fd, const spk_proto_msg *m, int64_t deadline_ms);

/*
 * The same with a session key: key non-NULL sends the frame sealed (SPK_PROTO_F_SEALED, tag made
 * with `key`); on receive, key non-NULL requires a sealed frame with a valid tag (AUTH if not;
 * nothing of the frame is decoded before its tag is checked). key NULL: as above.
 */
spk_status spk_net_send_msg_key(int fd, const spk_proto_msg *m, const uint8_t *key,
                                int64_t deadline_ms);
spk_status spk_net_recv_frame_key(int fd, int64_t deadline_ms, const uint8_t *key,
                                  spk_proto_msg *m, uint8_t **payload);

#endif
