// Package pki makes a CA and leaf certificates for loopback services and
// tests; it is not a general PKI. It owns key generation (ECDSA P-256
// only), positive random serials and the PEM encoding of what it makes. It
// refuses nothing on the caller's behalf: there is no revocation, no chain
// longer than CA and leaf, and no persistence beyond writing PEM files.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// backdate is how far before now every certificate becomes valid, so a
// peer whose clock lags a little still accepts it.
const backdate = time.Hour

// CA is a self-signed certificate authority.
type CA struct {
	Cert *x509.Certificate
	DER  []byte
	Key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA named cn, valid until notAfter, with usage
// (which should include x509.KeyUsageCertSign).
func NewCA(cn string, notAfter time.Time, usage x509.KeyUsage) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: ca key: %w", err)
	}
	serial, err := Serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-backdate),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: ca certificate: %w", err)
	}
	return &CA{Cert: cert, DER: der, Key: key}, nil
}

// Leaf describes an end-entity certificate. Its key usage is always
// digital signature.
type Leaf struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPAddresses  []net.IP
	ExtKeyUsage  x509.ExtKeyUsage
	NotAfter     time.Time
}

// Cert is an issued certificate and its key.
type Cert struct {
	DER []byte
	Key *ecdsa.PrivateKey
}

// Issue makes a certificate for l signed by ca.
func (ca *CA) Issue(l Leaf) (*Cert, error) {
	return issue(l, ca)
}

// SelfSigned makes a certificate for l signed by its own key.
func SelfSigned(l Leaf) (*Cert, error) {
	return issue(l, nil)
}

// issue signs l with ca, or with its own key when ca is nil.
func issue(l Leaf, ca *CA) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	serial, err := Serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.CommonName, Organization: l.Organization},
		DNSNames:     l.DNSNames,
		IPAddresses:  l.IPAddresses,
		NotBefore:    time.Now().Add(-backdate),
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{l.ExtKeyUsage},
	}
	signer, signKey := tmpl, key
	if ca != nil {
		signer, signKey = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate %q: %w", l.CommonName, err)
	}
	return &Cert{DER: der, Key: key}, nil
}

// Serial returns a random serial number in [1, 2^127).
func Serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 127), big.NewInt(1)))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// CertPEM encodes a DER certificate as PEM.
func CertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// CertPEM returns the certificate as PEM.
func (c *Cert) CertPEM() []byte { return CertPEM(c.DER) }

// KeyPEM returns the key as PKCS #8 PEM.
func (c *Cert) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteFiles writes the certificate to certFile and the key to keyFile with
// the given modes, replacing files that exist.
func (c *Cert) WriteFiles(certFile string, certMode os.FileMode, keyFile string, keyMode os.FileMode) error {
	kp, err := c.KeyPEM()
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, c.CertPEM(), certMode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.WriteFile(keyFile, kp, keyMode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}
