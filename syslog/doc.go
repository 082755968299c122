// Package syslog delivers the audit journal to syslog receivers and Wazuh:
// RFC 5424 (structured data under the SD-ID applianced@32473), RFC 3164 and
// a Wazuh profile (an RFC 3164 header and a one-line JSON body), over udp://,
// tcp:// and tls:// (octet-counting or newline framing) or a local
// unix:///dev/log datagram socket.
//
// Delivery is from the journal, never from memory. Each target has its own
// durable cursor (a small file replaced atomically); the cursor moves past a
// message only once the receiver's TCP stack acknowledged it and the
// receiving application took it out of its socket buffer (the window it
// advertises). After a reconnect everything after the cursor is sent again:
// delivery is at least once, and a duplicate carries the same seq. Failed
// connections are retried with exponential backoff and full jitter; a
// target's lag and last error are in Forwarder.Status, and a target going
// down or coming back is itself an audit event.
//
// Stopping never waits on a receiver: when Run's ctx ends, a dial, a TLS
// handshake, a write blocked on a receiver that does not read (its socket
// is closed) and a retry wait all return at once. At stop the daemon calls
// Stopping, writes the final checkpoint, and gives FlushConnected
// StopFlushTimeout to deliver it to the targets that are connected; one
// that is not is given up on at once. What a target did not get stays in
// the journal and goes from its cursor after the next start.
//
// Every message carries the entry's seq, chain hash and previous hash and the
// event's canonical JSON, in a body that starts with `{"audit_seq":`, so
// `applianced audit verify` can check what a receiver stored
// (audit.CaptureVerifier). An event larger than max_message_bytes is sent in
// numbered parts or replaced by a stub naming it (oversize = "refuse"); it is
// never truncated.
//
// Caveats: UDP has no acknowledgement and loses messages when the receiver
// is down; use it only to a receiver on the same host. Plain TCP cannot prove
// that a receiver wrote a message to disk: a receiver that crashes while
// holding taken but unwritten messages loses them, and `audit verify` on its
// file names the gap.
//
// The package refuses: truncating an event, sending from anything but the
// journal, and moving a cursor past what the receiver has not taken.
package syslog
