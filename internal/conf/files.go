package conf

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// CertPool reads a PEM bundle of CA certificates (a ca_file). The error
// says what to fix and names the file.
func CertPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %s", path, fileErrText(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate (want -----BEGIN CERTIFICATE----- blocks)", path)
	}
	return pool, nil
}

// CheckCertFile checks that path holds a PEM certificate (a cert_file).
func CheckCertFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cannot read %s: %s", path, fileErrText(err))
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return fmt.Errorf("%s holds no PEM certificate (want a -----BEGIN CERTIFICATE----- block)", path)
	}
	if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

// CheckExists checks that path exists, without reading it: a private key
// may be readable by the daemon's user only, not by whoever checks the
// config.
func CheckExists(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("cannot use %s: %s", path, fileErrText(err))
	}
	return nil
}

func fileErrText(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
