// Package syslog delivers the audit journal to syslog receivers and Wazuh:
// RFC 5424 (structured data under the SD-ID applianced@32473), RFC 3164 and
// a Wazuh profile (an RFC 3164 header and a one-line JSON body), over udp://,
// tcp:// and tls:// (octet-counting or newline framing), relp:// and
// relp+tls:// (RELP, rsyslog's imrelp) or a local unix:///dev/log datagram
// socket.
//
// Delivery is from the journal, never from memory. Each target has its own
// durable cursor (a small file replaced atomically); the cursor moves past a
// message only once the receiver has it. Over RELP that is the receiving
// application's answer to the message, sent once it processed it. Over tcp://
// and tls:// it is the receiver's TCP acknowledgement while the window it
// advertises shows it reading: a receiver whose window falls below half its
// largest holds data unread, and nothing more is confirmed until it reads.
// After a reconnect everything after the cursor is sent again:
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
// Every message carries the entry's seq, the journal's chain id
// (audit_chain, absent for a journal made before chain ids), chain hash and
// previous hash and the event's canonical JSON, in a body that starts with
// `{"audit_seq":`, so `applianced audit verify` can check what a receiver
// stored (audit.CaptureVerifier). An event larger than max_message_bytes is sent in
// numbered parts or replaced by a stub naming it (oversize = "refuse"); it is
// never truncated.
//
// Caveats: UDP has no acknowledgement and loses messages when the receiver
// is down; use it only to a receiver on the same host. TCP cannot prove that
// the receiving application read a message, let alone wrote it: a receiver
// that stops reading keeps acknowledging until its buffer is half full
// without its window showing it (Linux grows the window it offers, not
// shrinks it, while little data waits), so a few messages sent to a stuck
// receiver count as delivered, and are lost if it is then killed. `audit
// verify` on its file names the gap. Where that matters, use RELP: its
// receiver answers each message, and an unanswered one is sent again.
//
// The package refuses: truncating an event, sending from anything but the
// journal, and moving a cursor past what the receiver has not acknowledged.
package syslog
