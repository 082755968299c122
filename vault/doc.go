// Package vault owns the appliance's secrets: a bbolt database in the state
// directory (vault.db, mode 0600), encrypted under a keyring that the master
// key seals. It is the only package that decrypts a secret, and it hands a
// value only to the appliance's own components, for the instant they use it.
//
// # The barrier
//
// The master key (32 bytes, never stored in the database) comes from, in
// order: the systemd credential $CREDENTIALS_DIRECTORY/master.key (so a site
// can use LoadCredentialEncrypted= with the TPM2 or the host key), or the
// file [vault] master_key_file that `applianced init` creates with mode 0400
// (LoadMasterKey refuses a file group or others can read or write). It
// encrypts the keyring, a list of AES-256 data keys numbered by term. Each
// version of each secret is sealed with AES-256-GCM under the active term,
// with a fresh random nonce, and with additional data naming its namespace,
// name, type, version and term, so a ciphertext copied to another name,
// version or term does not open. A key check (an HMAC under the master key)
// tells a wrong key (ErrSealed: "vault is sealed: master key does not open
// the keyring") from a damaged keyring (ErrCorrupt).
//
// The keyring also holds a record key, used for nothing but this: every
// stored record (a secret or a system key with all its kept versions)
// carries an HMAC-SHA256 under it over its namespace, name, type, times,
// allowed_tools, and each version's number, term, time, nonce and length.
// The record is checked before anything in it is used: by ForTool and
// ForInternal, Verify, Describe, List, Status, system keys, by Put, Rotate
// and re-encryption before they write over it, and by Restore for every
// record of the backup. So someone who can write vault.db but does not have
// the master key (a file system, a doctored backup) cannot add a tool to a
// secret's allowed_tools, nor drop its newest versions to make a rotated
// value current again. A record that fails the check is refused, naming
// it, with an error wrapping ErrCorrupt, and no value is handed out; Delete
// still removes it. List and Status do not fail for it: List gives its name
// and why it is refused (Meta.Refused), nothing else of it, and Status
// counts it apart (Refused, RefusedRecords), so the admin sees every
// record that needs a restore or a delete.
//
// # Upgrading a database written before records carried a MAC
//
// A database from an earlier version of the appliance (format marker
// applianced-vault-1, keyring format 1, records without a MAC) is never
// upgraded on its own: Open refuses it with an error wrapping ErrOldFormat
// (audited as a failed vault.unseal) that says what to do, and leaves it
// as it is. Upgrade, which the admin runs on purpose once after installing
// the release (`applianced vault upgrade`, with the daemon stopped), does
// it in one bbolt transaction audited before it commits (a vault.unseal
// event with action vault.upgrade): a record key and a new term join the
// keyring, every version is re-encrypted under that term, every record
// gets its MAC, and the keyring is sealed again in format 2 with the
// marker set to applianced-vault-2. A record that does not decode or
// decrypt is left as it was and is refused until deleted; the event names
// it. Upgrade then compacts the file (bbolt's Compact into
// vault.db.compact-tmp, fsync, rename, fsync of the directory), so the
// pages bbolt freed keep neither the format 1 keyring nor the format 1
// records. Killed at any moment, it leaves the file either as it was or
// upgraded (and maybe a vault.db.compact-tmp, which the next run removes);
// run again on an upgraded file, it only compacts.
//
// The upgrade trusts the records as it finds them, once: whoever could
// write the file before the upgrade could have changed them, and nothing
// can tell. That is why it is not automatic. Someone who can write vault.db
// can put back a copy from before the upgrade (a backup the admin made
// before installing the release, or one rebuilt from freed pages) with a
// tool added to a secret's allowed_tools: its keyring, marker and records
// all agree, and only the master key could tell an upgraded database from
// it, so nothing in the file can. Open refuses such a copy, and the admin,
// who has already upgraded, knows it is not the vault to upgrade: it is
// restored from a backup taken since. A database upgraded cannot be made to
// look un-upgraded by a change of its own: the keyring's format, which only
// the master key can write, says that records carry a MAC, and a marker
// that disagrees with it is refused. An earlier version of the appliance
// refuses an upgraded database ("unknown format").
//
// Where Upgrade gets the master key: `applianced vault upgrade` reads it
// as the daemon does, from $CREDENTIALS_DIRECTORY/master.key, then from
// [vault] master_key_file. With the plain key file, root runs it as is.
// With the key as a systemd credential (LoadCredentialEncrypted=, maybe
// sealed to the TPM2), root cannot read it outside a unit: the verb runs
// in a transient unit that loads the credential as the service does,
//
//	systemd-run --wait --pipe --collect \
//	    -p LoadCredentialEncrypted=master.key:/etc/credstore.encrypted/applianced.master.key \
//	    /usr/bin/applianced vault upgrade --config /etc/applianced/applianced.toml
//
// The verb refuses to run while a daemon answers on the admin socket (and
// Upgrade while another process holds the database's lock), records the
// event in the audit journal of the state directory itself, and, started as
// root, works as the owner of vault.db once the key is read, so the files
// it writes stay the service's. It also refuses a format 1 vault whose
// upgrade the journal already records (it is then an older copy put back)
// unless told --again; that check is only as good as the journal, which
// the service's user can write too.
//
// Restore likewise refuses a backup written before records carried a MAC
// (ErrOldFormat) unless RestoreOptions.UpgradeOldFormat asks for it (`vault
// restore --upgrade-old-format FILE`); the backup is then upgraded (the
// vault.upgrade event says of=backup) and compacted before it replaces the
// database, and RestoreResult.Upgraded tells the operator that its
// metadata was trusted as found.
//
// Rekey adds a term and makes it active; older terms keep opening what they
// sealed, and Rekey with reencrypt moves every version to the new term
// online. Backup writes a consistent snapshot (bbolt's tx.WriteTo) that is as
// encrypted as the database; Restore accepts only a backup that passes the
// consistency check, opens with the current master key and decrypts fully,
// and keeps the replaced file as vault.db.before-restore.
//
// # Secrets
//
// A secret has a name (1 to 128 of letters, digits and . _ - : @), a Type
// (password, api_key, basic, oauth2_client, tls_client, opaque), the last
// keep_versions versions with their times, and allowed_tools: the [[tool]]
// entries that may use it. Values are at most 64 KiB; structured types are
// written as JSON and checked (fields present, a TLS key pair that matches).
// The verbs are Put, Rotate, List and Describe (metadata only), Delete and
// Verify (a constant-time comparison with a candidate). No verb returns a
// stored value to an operator.
//
// # What the appliance's components use
//
//   - ForTool(ctx, tool, name): the tool proxy's fetch. Denied, with
//     ErrDenied and an audit event, unless tool is in allowed_tools. The
//     value comes in the form the proxy injects: raw for password, api_key
//     and opaque; "user:password" for basic; JSON for oauth2_client; the
//     certificate PEM then the key PEM for tls_client.
//   - ForInternal(ctx, user, name): the same for a component that is not a
//     tool, labelled by user, e.g. ldapauth reading [ldap]
//     bind_password_secret. allowed_tools does not apply.
//   - SystemKey(ctx, name, create): get-or-create of a key the appliance
//     makes for itself (JWT signing keys, the audit HMAC key, the audit
//     checkpoint key); PutSystemKey stores a new version (rotation) and
//     SystemKeyVersions returns the kept ones, newest first; Key(ctx,
//     purpose) is a get-or-create of 32 random bytes. System keys live in
//     their own bucket under the same barrier, are never listed as secrets
//     and no verb exports them. *Vault implements audit.KeySource.
//
// Every value returned is a fresh copy that the caller clears when done.
//
// # Audit
//
// Every operation appends an event to the journal (Options.Audit) before it
// acts or answers: secret.put, secret.rotate, secret.delete, secret.verify,
// secret.use (denials), vault.unseal, vault.rekey, vault.backup,
// vault.restore, and admin.call for list and status. Events carry names,
// versions, terms and the operator's uid, never a value. If the append fails
// the operation fails (ErrAudit) and nothing changes. A granted ForTool or
// ForInternal is not audited here (the component's own event names the
// secret), and neither is reading a system key. vault.unseal and, at
// Close, vault.close carry the digest of the whole database (state.go):
// the vault must open in the state it closed in, which `audit verify`
// checks on the receiver's copy; a close the journal refuses is only
// logged. Given the journal's newest mark (Options.Recorded), Open itself
// records vault.state_changed (severity high, both digests) and warns
// when the vault closed in another state than it opens in; it opens it
// all the same (state.go says why).
//
// # Caveats
//
//   - Writes are group-committed: one goroutine commits every write queued
//     while the previous commit was syncing. A write returns only after its
//     commit is durable.
//   - The event of a change is appended before the change is written; if the
//     write then fails, a second event with outcome failure follows.
//   - Go cannot clear strings: structured values are parsed into strings
//     while they are checked. Byte slices holding plaintext are cleared.
//   - bbolt maps the file. Before opening, the vault checks the file itself
//     (meta page, freelist, every reachable page) so a damaged file is an
//     error naming it rather than a crash; a file changed underneath a
//     running daemon is outside what it can defend.
//   - Random 96-bit nonces: a term should seal well under 2^32 values; rekey
//     long before (each version written is one seal).
//   - The record MAC proves that the vault wrote a record as it is, not that
//     it is the newest: a whole record copied back from an older copy of the
//     same database (a backup taken before a rotation, or a stale page bbolt
//     freed but did not clear), or the whole file rolled back, is accepted,
//     and a deleted record is just missing. Telling the newest state from an
//     older one needs state outside the file (a monotonic counter); keep
//     backups as safe as the database.
package vault
