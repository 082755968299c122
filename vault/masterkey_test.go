package vault

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateMasterKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "applianced")
	path := filepath.Join(dir, "master.key")

	created, err := CreateMasterKeyFile(path)
	if err != nil || !created {
		t.Fatalf("CreateMasterKeyFile = %v, %v; want true, nil", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o400 {
		t.Errorf("key file mode = %04o, want 0400", got)
	}
	dst, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := dst.Mode().Perm(); got != 0o700 {
		t.Errorf("new parent directory mode = %04o, want 0700", got)
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != MasterKeySize {
		t.Fatalf("key file has %d bytes, want %d", len(first), MasterKeySize)
	}

	created, err = CreateMasterKeyFile(path)
	if err != nil || created {
		t.Fatalf("second CreateMasterKeyFile = %v, %v; want false, nil", created, err)
	}
	again, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, again) {
		t.Error("CreateMasterKeyFile overwrote an existing key file")
	}

	other := filepath.Join(dir, "other.key")
	if _, err := CreateMasterKeyFile(other); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(other)
	if bytes.Equal(first, second) {
		t.Error("two key files hold the same key")
	}
}

func TestLoadMasterKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0x42}, MasterKeySize)
	hexKey := []byte(hex.EncodeToString(raw) + "\n")
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
		cred    bool // put the file in $CREDENTIALS_DIRECTORY instead
		wantErr string
		wantSrc string
	}{
		{name: "raw 0400", content: raw, mode: 0o400, wantSrc: "file:"},
		{name: "raw 0600", content: raw, mode: 0o600, wantSrc: "file:"},
		{name: "hex with newline", content: hexKey, mode: 0o400, wantSrc: "file:"},
		{name: "systemd credential", content: raw, mode: 0o400, cred: true, wantSrc: "systemd-credential:"},
		{name: "group readable", content: raw, mode: 0o440, wantErr: "has mode 0440"},
		{name: "world readable", content: raw, mode: 0o644, wantErr: "want 0400 (or 0600)"},
		{name: "credential world readable", content: raw, mode: 0o444, cred: true, wantErr: "has mode 0444"},
		{name: "too short", content: raw[:16], mode: 0o400, wantErr: "is 16 bytes long"},
		{name: "too long", content: append(bytes.Clone(raw), 1), mode: 0o400, wantErr: "is 33 bytes long"},
		{name: "empty", content: nil, mode: 0o400, wantErr: "is 0 bytes long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "master.key")
			credDir := ""
			if tt.cred {
				credDir = filepath.Join(dir, "creds")
				if err := os.Mkdir(credDir, 0o700); err != nil {
					t.Fatal(err)
				}
				path = filepath.Join(credDir, CredentialName)
			}
			t.Setenv("CREDENTIALS_DIRECTORY", credDir)
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			cfg := Config{MasterKeyFile: filepath.Join(dir, "master.key")}
			key, src, err := LoadMasterKey(cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("LoadMasterKey error = %v, want one naming %s and saying %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadMasterKey: %v", err)
			}
			if !bytes.Equal(key, raw) {
				t.Errorf("key = %x, want %x", key, raw)
			}
			if want := tt.wantSrc + path; src != want {
				t.Errorf("source = %q, want %q", src, want)
			}
		})
	}
}

func TestLoadMasterKeyMissing(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", t.TempDir())
	path := filepath.Join(t.TempDir(), "master.key")
	_, _, err := LoadMasterKey(Config{MasterKeyFile: path})
	if err == nil || !strings.Contains(err.Error(), "applianced init") {
		t.Fatalf("LoadMasterKey error = %v, want one pointing at `applianced init`", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantKey []string
	}{
		{name: "zero is defaults", cfg: Config{}},
		{name: "shape example", cfg: Config{MasterKeyFile: "/etc/applianced/master.key", KeepVersions: 5}},
		{name: "relative key file", cfg: Config{MasterKeyFile: "master.key"}, wantKey: []string{"master_key_file"}},
		{name: "negative versions", cfg: Config{KeepVersions: -1}, wantKey: []string{"keep_versions"}},
		{name: "too many versions", cfg: Config{KeepVersions: MaxKeepVersions + 1}, wantKey: []string{"keep_versions"}},
		{name: "both", cfg: Config{MasterKeyFile: "x", KeepVersions: 1000}, wantKey: []string{"master_key_file", "keep_versions"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := tt.cfg.Validate()
			var got []string
			for _, e := range errs {
				got = append(got, e.Key)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantKey, ",") {
				t.Errorf("Validate keys = %v, want %v (%v)", got, tt.wantKey, errs)
			}
		})
	}
}
