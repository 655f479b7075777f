/* wire.h - socket I/O that the remote client and the session worker share.
 *
 * Only the byte moving: frames, batching and the handshake stay with each side. Never blocks
 * a signal and never raises SIGPIPE (a peer that went away is an error return, not a death).
 */
#ifndef FX_REMOTE_WIRE_H
#define FX_REMOTE_WIRE_H

#include <sys/uio.h>

/* Send all of iov[0..n) on fd, retrying short writes and EINTR; 0, or -1 when the peer is gone.
 * The iovec array is consumed (its entries are advanced). */
int fx_r_send_iov(int fd, struct iovec *iov, int n);

#endif
