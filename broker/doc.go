// Package broker owns agent identities and their short-lived tokens: the
// [[role]], [[agent]] and [[policy]] sections, agent authentication, JWT
// access tokens (RFC 9068, EdDSA), the OAuth2 endpoints (token with
// client_credentials, token exchange and refresh_token; introspection;
// revocation; RFC 8414 metadata; JWKS), user login through an
// Authenticator, and the attribute-based policies the tool proxy consults.
//
// Agents authenticate without shared passwords by default: on the agent
// Unix socket by the kernel's peer credentials (install ConnContext on the
// socket's http.Server), over HTTPS by private_key_jwt (RFC 7523) with the
// agent's registered Ed25519 key. A client_secret, stored only as an
// argon2id hash, is accepted but listed by SecretAgents for doctor.
//
// A token is for one tool. The token endpoint takes RFC 8707's resource
// parameter on client_credentials and token exchange (and RFC 8693's
// audience on token exchange) naming a [[tool]], by its URL
// "<issuer>/v1/tools/<name>" or by its bare name; the token's aud is then
// exactly ToolResource(name), the one audience the tool proxy accepts for
// that tool. Without a target the token carries the general ToolAudience,
// good for introspection and refused by the tool proxy. An unknown tool,
// more than one target in a request, or a target on refresh_token is
// invalid_target; scopes are still those of the agent's roles.
//
// Every issuance and every refusal is appended to the audit journal before
// the answer; if an issuance cannot be recorded, no token is returned. Audit
// events carry the HMAC of a token id, never a token, and the user's account
// id (account_id) wherever the account is known, since a name may be another
// person's later; introspection answers it as oid.
//
// Verify is what the tool proxy and introspection use. It checks, in order:
// the token's size and EdDSA-only parse, typ at+jwt, the key by kid among the
// current and previous signing keys, the signature, iss/exp/nbf/iat with 30 s
// leeway, aud, then the revocation list, the agent's state and user
// revocation. Revocation and disabling take effect at once in this process.
// A token whose signature checked out is remembered by the SHA-256 of its
// text (a bounded cache), so an agent's later calls with the same token
// skip the parse and the Ed25519 check (about 70 µs of CPU, against about
// 1 µs); every other check, the signing key's trust included, runs on every
// call.
//
// The package refuses: any algorithm but EdDSA, tokens without exp or jti,
// repeated or URL-borne OAuth2 parameters, client_secret stored in clear,
// and acting for a user whose groups the agent is not allowed.
//
// # Caveats
//
// The revocation list and agent states are cached in memory and written
// through to the Store; a second appliance sharing the Store sees changes
// when it reloads them. Requests on the agent socket count as coming from
// 127.0.0.1 for source_cidrs.
//
// # Directory changes
//
// A user disabled, locked out, expired, deleted or taken out of
// allowed_groups in the directory:
//
//   - loses every token and session within 30 s even if the user makes no
//     request: Run asks the directory about every user who holds a token
//     that may still be live (RecheckHolders, every DirectoryRecheckEvery;
//     only a refusal or a failure is recorded), and revokes as below
//     (trigger directory_recheck). The holders are every (account, name)
//     issued a token that may still be live, recorded in the Store before
//     the token is handed out (so a restart checks them too, with or
//     without a session left), and those with a live session; a directory
//     that cannot answer ends a round, and the next one tries again;
//   - is refused at the next refresh_token grant and at the next token
//     exchange for them: both ask the directory again without a password
//     (Authenticator.Recheck, audited as auth.recheck), reading the account
//     state afresh each time. The refusal is invalid_grant and, at that
//     moment, every session (refresh family) and every token of or for the
//     user, an agent's exchanged tokens included, is revoked (token.revoke,
//     reason directory_denied), so introspection and the tool proxy reject
//     them at once;
//   - is cut off at once by RevokeUser (`applianced token revoke --user`),
//     the kill switch that needs no request from the user, by the name the
//     tokens carry (it lists the account ids that held tokens under it),
//     or by RevokeAccount (`--account`), by the account's id, under every
//     name it had.
//
// A user's sessions and tokens belong to the directory account, known by
// its immutable id (objectGUID, entryUUID; the "oid" claim of user tokens),
// not to its name: every recheck asks about that account under the name
// the tokens carry, and one deleted is refused (user_not_found) even when
// another account has the name now, whose own sessions and tokens are
// untouched. The broker checks each (account, name) pair it issued tokens
// to: an account renamed while still allowed (account_renamed) loses only
// its sessions and tokens under the old name (token.revoke, target
// account_name), which may be someone else's now, and keeps those under
// its name now. Sessions stored
// by versions that kept no account id cannot be tied to an account any
// more: each ends at the first check after the start (token.revoke, reason
// session_without_account_id, the directory not asked), and the user logs
// in again. Every user token without an account id (no "oid" claim, so
// signed by such a version) is refused from the start, an agent's
// exchanged token for a user who has no session left included.
//
// A refresh takes the user's groups, roles and scopes from the directory
// (group changes take effect at refresh); a token exchange may take the
// groups from the directory's group cache (group_cache_ttl, 5 minutes by
// default), never the account state. A directory that cannot answer
// refuses refresh and exchange with temporarily_unavailable (fail closed)
// and revokes nothing: the refresh token stays valid for a later try.
package broker
