package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/applianced/applianced/internal/pki"
)

// loadTLS loads the API's certificate and key, refusing a key file that
// group or others may read.
func loadTLS(certFile, keyFile string) (tls.Certificate, error) {
	if err := checkPrivateFile(keyFile); err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading the API certificate (%s, %s; `applianced init` makes a self-signed pair): %w", certFile, keyFile, err)
	}
	return cert, nil
}

// checkPrivateFile refuses a key file that group or others can access.
func checkPrivateFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("key file %s: %w (run `applianced init` to create it)", path, errors.Unwrap(err))
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("key file %s has mode %04o: it must not be readable by group or others; run `chmod 0600 %s`", path, m, path)
	}
	return nil
}

// writeSelfSigned creates a self-signed ECDSA P-256 certificate for hosts
// (DNS names or IPs) at certFile and its key at keyFile (0600). It never
// overwrites: if either file exists it returns created=false.
func writeSelfSigned(certFile, keyFile string, hosts []string) (created bool, err error) {
	for _, p := range []string{certFile, keyFile} {
		if _, err := os.Stat(p); err == nil {
			return false, nil
		}
	}
	leaf := pki.Leaf{
		CommonName:   hosts[0],
		Organization: []string{"applianced"},
		ExtKeyUsage:  x509.ExtKeyUsageServerAuth,
		NotAfter:     time.Now().AddDate(2, 0, 0),
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	cert, err := pki.SelfSigned(leaf)
	if err != nil {
		return false, err
	}
	keyPEM, err := cert.KeyPEM()
	if err != nil {
		return false, err
	}
	for _, p := range []string{certFile, keyFile} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return false, err
		}
	}
	if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
		return false, err
	}
	if err := writeNew(certFile, cert.CertPEM(), 0o644); err != nil {
		os.Remove(keyFile)
		return false, err
	}
	return true, nil
}

// writeNew writes data to a file that must not exist yet, and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
