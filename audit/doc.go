// Package audit owns the appliance's record of every decision: the event
// model, the append-only hash-chained journal on local disk, and its
// verification.
//
// Every component that decides something (a login, a token, a proxied call,
// a firewall change) calls Append before it replies. Append returns only
// after the entry is on disk (fsync); concurrent appenders share one fsync
// (group commit). If the journal cannot be written, Append fails and so does
// the action: there is no decision without a record.
//
// Each entry carries its sequence number and a SHA-256 chain hash over the
// previous entry's hash and the event's canonical bytes. Segments rotate by
// size; the chain continues across them. A durable marker of the last
// sequence number lets Verify tell a cut tail from a journal that simply
// ended. The segment being written keeps zeros written ahead of its newest
// entry, so the fsync after an append writes the entry and not also the
// file's new size; every reader takes a zero byte as the end of a segment's
// entries, and finished segments are trimmed back to their entries.
//
// Signed checkpoints (Checkpointer) seal the chain: one every so many
// entries, one every interval even when nothing else happens (a
// heartbeat), and a final one when the journal closes. Each signs the seq
// and chain hash it covers, the time it was made and the interval within
// which the next follows, so a capture whose newest seal is older than
// when it was taken, less that interval, was cut after it. Checkpoints of
// versions before this carry no time: they still verify, and each is dated
// by the newest entry it covers, whose time the chain hash it signs
// authenticates, so a capture cut back to one is as stale as any other.
//
// Each journal is one chain with a random chain id, made with its seq 1 and
// kept in every segment header, carried by every entry a forwarder sends
// (audit_chain) and signed in every checkpoint. After a damaged journal is
// moved aside, its successor starts again at seq 1 with a new id, and a
// receiver holding both is verified chain by chain: --from applies to the
// oldest chain in a capture, every later one starts at seq 1, and each
// chain but the newest must be sealed up to when the next began (its
// heartbeats promise that) or end in a final seal. A new chain names the
// one it replaced (chainlink.go): a record beside the journal's directory
// keeps its chain id, last seq and chain hash as of its first entry, its
// newest checkpoint or its close (a failure to write it is recorded as
// audit.chain_record), and the next new chain's seq 1 is an
// audit.chain_start event
// naming them. A capture must then hold that chain up to that entry; a
// chain that is not the oldest in a capture and names none (made by a
// version before links, or after the record was lost) is a problem, since
// the capture cannot show that no chain before it was dropped. A journal
// made by a version before chain ids keeps none for as long as it lasts:
// its entries are sent without audit_chain and verified as the legacy
// chain, whose checkpoints name no chain.
//
// Caveat: the record is written by whichever journal last checkpointed or
// closed in that place; a journal still open (its daemon running) when
// its directory is moved aside writes it again at its next checkpoint.
// Stop the daemon before moving the directory.
//
// What this proves, and to whom: the chain and the marker catch accidents
// and edits by someone who cannot write the journal's files. Root on the
// appliance can: it can rewrite entries, recompute the chain and the
// marker, and read the checkpoint key (the vault's master key is on the
// same host). So the evidence an auditor relies on is what a receiver
// stored, checked with `applianced audit verify FILE --pubkey KEY` (the
// key kept off the appliance): entries a receiver got before a compromise
// cannot be changed unseen; entries not yet delivered (a SIEM down, a
// stopped forwarder) are only as safe as the host. Keep delivery lag small
// (doctor and the audit.target_down alert watch it).
//
// The package refuses: rewriting or deleting entries (retention removes whole
// segments only, after every forwarder has delivered them), and any field
// that holds a secret value.
package audit
