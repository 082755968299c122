package ldapauth

import (
	"errors"
	"regexp"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// Reason says why a login was denied. The audit trail and `applianced ldap
// test` show it; API callers only ever get a generic invalid_grant.
type Reason string

// Denial reasons.
const (
	ReasonInvalidCredentials   Reason = "invalid_credentials"   // wrong password (AD 52e)
	ReasonAccountDisabled      Reason = "account_disabled"      // userAccountControl 0x2 (AD 533)
	ReasonAccountLocked        Reason = "account_locked"        // lockout (AD 775)
	ReasonAccountExpired       Reason = "account_expired"       // accountExpires passed (AD 701)
	ReasonPasswordExpired      Reason = "password_expired"      // maxPwdAge passed (AD 532)
	ReasonPasswordMustChange   Reason = "password_must_change"  // pwdLastSet = 0 (AD 773)
	ReasonLogonNotAllowed      Reason = "logon_not_allowed"     // logon hours or workstation (AD 530, 531)
	ReasonUserNotFound         Reason = "user_not_found"        // no entry matched the name, or the account was deleted
	ReasonAccountRenamed       Reason = "account_renamed"       // a recheck by id: the account goes by another name now
	ReasonAmbiguousUser        Reason = "ambiguous_user"        // several entries matched the name
	ReasonInvalidAccountID     Reason = "invalid_account_id"    // a recheck's account id is not a UUID
	ReasonNotInAllowedGroups   Reason = "not_in_allowed_groups" // member of none of allowed_groups
	ReasonRateLimited          Reason = "rate_limited"          // too many recent failures; the DC was not asked
	ReasonEmptyPassword        Reason = "empty_password"        // refused without contacting the DC
	ReasonInvalidName          Reason = "invalid_name"          // malformed, overlong or non-UTF-8 name
	ReasonInvalidPassword      Reason = "invalid_password"      // overlong password
	ReasonDirectoryRefused     Reason = "directory_refused"     // another bind result code
	ReasonDirectoryUnavailable Reason = "directory_unavailable" // no DC answered (an error, not a denial)
)

// adData extracts the "data NNN" sub-code of an AD bind error message:
// "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1".
var adData = regexp.MustCompile(`\bdata ([0-9a-fA-F]{1,8})\b`)

// bindReason maps a failed user bind to a reason and the AD sub-code ("" when
// the directory gave none).
func bindReason(err error) (Reason, string) {
	var le *ldap.Error
	if !errors.As(err, &le) {
		return ReasonDirectoryRefused, ""
	}
	code := ""
	if le.Err != nil {
		if m := adData.FindStringSubmatch(le.Err.Error()); m != nil {
			code = strings.ToLower(m[1])
		}
	}
	switch code {
	case "52e":
		return ReasonInvalidCredentials, code
	case "525":
		return ReasonUserNotFound, code
	case "530", "531":
		return ReasonLogonNotAllowed, code
	case "532":
		return ReasonPasswordExpired, code
	case "533":
		return ReasonAccountDisabled, code
	case "701":
		return ReasonAccountExpired, code
	case "773":
		return ReasonPasswordMustChange, code
	case "775":
		return ReasonAccountLocked, code
	}
	if le.ResultCode == ldap.LDAPResultInvalidCredentials {
		return ReasonInvalidCredentials, code
	}
	return ReasonDirectoryRefused, code
}
