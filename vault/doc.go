// Package vault owns the appliance's secrets: a bbolt database in the state
// directory (mode 0600), encrypted with a keyring of data keys that the
// master key seals. It is the only package that decrypts a secret, and it
// does so only for the broker, for the instant a value is used.
package vault
