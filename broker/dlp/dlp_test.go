package dlp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

const (
	testJWT  = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
	testPEM  = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----"
	testGHP  = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"
	testAWS  = "AKIAIOSFODNN7EXAMPLE"
	testIBAN = "DE89 3704 0044 0532 0130 00"
)

func newScanner(t testing.TB, cfg Config) *Scanner {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func TestRedactTextFindsPlantedValues(t *testing.T) {
	s := newScanner(t, Config{})
	tests := []struct {
		name, in, secret, det string
	}{
		{"visa spaced", "card 4111 1111 1111 1111 on file", "4111 1111 1111 1111", Card},
		{"mastercard", "pan=5555555555554444.", "5555555555554444", Card},
		{"amex dashed", "amex 3782-822463-10005", "3782-822463-10005", Card},
		{"iban spaced", "pay to " + testIBAN + " today", testIBAN, IBAN},
		{"iban compact gb", "GB82WEST12345698765432", "GB82WEST12345698765432", IBAN},
		{"iban fr letters", "FR1420041010050500013M02606", "FR1420041010050500013M02606", IBAN},
		{"jwt", "token: " + testJWT, testJWT, JWT},
		{"pem", "key:\n" + testPEM + "\nend", "MIIEowIBAAKCAQEAu1SU1Lf", PrivateKey},
		{"pem without end", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", PrivateKey},
		{"aws", "id " + testAWS + " ok", testAWS, AWSAccessKey},
		{"github", "use " + testGHP, testGHP, APIKey},
		{"stripe", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", APIKey},
		{"slack", "xoxb-123456789012-abcdefghijkl", "xoxb-123456789012-abcdefghijkl", APIKey},
		{"bearer", "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345", BearerToken},
		{"password kv", "user=bob&password=hunter2secret&x=1", "hunter2secret", PasswordField},
		{"password json text", `{"db_password": "s3cr3t-value"}`, "s3cr3t-value", PasswordField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, res := s.RedactText([]byte(tt.in))
			if bytes.Contains(got, []byte(tt.secret)) {
				t.Errorf("got %q, still holds %q", got, tt.secret)
			}
			if res[tt.det] == 0 {
				t.Errorf("got result %v, want detector %s", res, tt.det)
			}
			if !bytes.Contains(got, []byte("[REDACTED:")) {
				t.Errorf("got %q, want a [REDACTED:...] marker", got)
			}
		})
	}
}

func TestChecksumsRejectLookalikes(t *testing.T) {
	s := newScanner(t, Config{})
	for _, in := range []string{
		"4111 1111 1111 1112",         // Luhn fails
		"1234567890123456",            // no issuer
		"DE89 3704 0044 0532 0130 01", // mod-97 fails
		"DE89370400440532013",         // too short for DE
		"order 41111111111111111111",  // 20 digits
		"v1.4111111111111111",         // part of a version-ish token
		"AKIAIOSFODNN7EXAMPL",         // 15 chars after prefix
	} {
		t.Run(in, func(t *testing.T) {
			got, res := s.RedactText([]byte(in))
			if res.Found() || string(got) != in {
				t.Errorf("got %q %v, want %q untouched", got, res, in)
			}
		})
	}
}

// bigBenignJSON is what ticketing and CRM APIs answer all day: ids,
// timestamps, hashes, counters.
func bigBenignJSON(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type rec struct {
		ID         int       `json:"id"`
		UUID       string    `json:"uuid"`
		Snowflake  uint64    `json:"snowflake_id"`
		Created    time.Time `json:"created_at"`
		Updated    string    `json:"updated"`
		EpochMS    int64     `json:"epoch_ms"`
		EpochNS    int64     `json:"epoch_ns"`
		Hash       string    `json:"sha256"`
		ObjectID   string    `json:"object_id"`
		Amount     float64   `json:"amount"`
		Priority   int       `json:"priority"`
		Status     string    `json:"status"`
		PageToken  string    `json:"next_page_token"`
		TokenCount int       `json:"token_count"`
		Tags       []string  `json:"tags"`
	}
	var recs []rec
	for i := range n {
		ts := base.Add(time.Duration(r.Int64N(int64(300 * 24 * time.Hour))))
		h := make([]byte, 32)
		for j := range h {
			h[j] = byte(r.UintN(256))
		}
		recs = append(recs, rec{
			ID:         100000 + i,
			UUID:       fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", r.Uint32(), r.UintN(1<<16), r.UintN(1<<12), r.UintN(1<<12), r.Uint64N(1<<48)),
			Snowflake:  (uint64(ts.UnixMilli()-1288834974657) << 22) | r.Uint64N(1<<22),
			Created:    ts,
			Updated:    ts.Format(time.RFC1123Z),
			EpochMS:    ts.UnixMilli(),
			EpochNS:    ts.UnixNano(),
			Hash:       fmt.Sprintf("%x", h),
			ObjectID:   fmt.Sprintf("%024x", h[:12]),
			Amount:     float64(r.IntN(1000000)) / 100,
			Priority:   r.IntN(5),
			Status:     []string{"open", "closed", "pending"}[r.IntN(3)],
			PageToken:  fmt.Sprintf("p%d", i),
			TokenCount: r.IntN(4096),
			Tags:       []string{"ticket", fmt.Sprintf("T-%06d", i)},
		})
	}
	b, _ := json.MarshalIndent(map[string]any{"items": recs, "total": n}, "", "  ")
	return b
}

func TestNoFalsePositivesOnIDsAndTimestamps(t *testing.T) {
	s := newScanner(t, Config{})
	in := bigBenignJSON(3000)
	for _, mode := range []string{"application/json", "text/plain"} {
		t.Run(mode, func(t *testing.T) {
			got, res := s.Redact(mode, in)
			if res.Found() {
				t.Fatalf("got findings %v on benign data", res)
			}
			if &got[0] != &in[0] || len(got) != len(in) {
				t.Errorf("got a rewritten body, want the same bytes back")
			}
		})
	}
}

func TestRedactJSONStructure(t *testing.T) {
	s := newScanner(t, Config{})
	in := `{"id": 17, "card": 4111111111111111, "note": "iban ` + testIBAN + `", "nested": [{"password": "hunter2"}, {"api_key": 12345}],
	"pem": "` + strings.ReplaceAll(testPEM, "\n", `\n`) + `", "escaped_jwt": "` + strings.ReplaceAll(testJWT, ".", `\u002e`) + `", "ok": true, "none": null, "credentials": {"user": "bob"}}`
	got, res, err := s.RedactJSON([]byte(in))
	if err != nil {
		t.Fatalf("RedactJSON: %v", err)
	}
	for _, secret := range []string{"4111111111111111", "3704 0044", "hunter2", "12345", "MIIEowIBAAKCAQEA", "dozjgNryP4J3jVmNHl0w5N"} {
		if bytes.Contains(got, []byte(secret)) {
			t.Errorf("got %s, still holds %q", got, secret)
		}
	}
	var v map[string]any
	if err := json.Unmarshal(got, &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, got)
	}
	if v["id"].(float64) != 17 || v["ok"] != true || v["none"] != nil {
		t.Errorf("got %v, want untouched id/ok/none", v)
	}
	if got, want := v["credentials"].(map[string]any)["user"], "bob"; got != want {
		t.Errorf("got credentials.user %v, want %v (containers under a sensitive key are scanned, not erased)", got, want)
	}
	for _, d := range []string{Card, IBAN, PasswordField, PrivateKey, JWT} {
		if res[d] == 0 {
			t.Errorf("got %v, want a %s finding", res, d)
		}
	}
}

func TestSiteDetectorsAndDisable(t *testing.T) {
	s := newScanner(t, Config{
		Disable:   []string{IBAN},
		Detectors: []DetectorConfig{{Name: "employee_id", Pattern: `\bEMP-[0-9]{6}\b`}},
	})
	got, res := s.RedactText([]byte("EMP-123456 paid to " + testIBAN))
	if want := "[REDACTED:employee_id] paid to " + testIBAN; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if res["employee_id"] != 1 || res[IBAN] != 0 {
		t.Errorf("got %v", res)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantKey string
	}{
		{"ok", Config{Disable: []string{Card}, Detectors: []DetectorConfig{{Name: "x", Pattern: "X-[0-9]+"}}}, ""},
		{"unknown disable", Config{Disable: []string{"cards"}}, "disable[0]"},
		{"bad name", Config{Detectors: []DetectorConfig{{Name: "Bad Name", Pattern: "x"}}}, "detector[0].name"},
		{"builtin name", Config{Detectors: []DetectorConfig{{Name: JWT, Pattern: "x"}}}, "detector[0].name"},
		{"bad regexp", Config{Detectors: []DetectorConfig{{Name: "x", Pattern: "(("}}}, "detector[0].pattern"},
		{"matches empty", Config{Detectors: []DetectorConfig{{Name: "x", Pattern: "a*"}}}, "detector[0].pattern"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := tt.cfg.Validate()
			if tt.wantKey == "" {
				if len(errs) != 0 {
					t.Fatalf("got %v, want no error", errs)
				}
				return
			}
			if len(errs) != 1 || errs[0].Key != tt.wantKey {
				t.Fatalf("got %v, want one error on %s", errs, tt.wantKey)
			}
		})
	}
}

func FuzzRedact(f *testing.F) {
	f.Add([]byte(`{"a": "4111 1111 1111 1111", "password": "x"}`), true)
	f.Add([]byte("iban "+testIBAN+" jwt "+testJWT), false)
	f.Add([]byte(testPEM), false)
	f.Add([]byte(`[1, 2.5e10, "DE89370400440532013000", {"k": [null, true]}] {"b": 5}`), true)
	s := newScanner(f, Config{})
	f.Fuzz(func(t *testing.T, in []byte, asJSON bool) {
		ct := "text/plain"
		if asJSON {
			ct = "application/json"
		}
		out, res := s.Redact(ct, in)
		if !res.Found() && !bytes.Equal(out, in) {
			t.Fatalf("nothing found but output changed")
		}
		// Redacting again finds nothing new that is a card or IBAN: the
		// markers themselves never look sensitive.
		out2, res2 := s.Redact(ct, out)
		if res2[Card] > 0 || res2[IBAN] > 0 || res2[JWT] > 0 {
			t.Fatalf("second pass found %v in %q (from %q)", res2, out2, out)
		}
		if asJSON && json.Valid(in) && !json.Valid(out) {
			t.Fatalf("valid JSON %q became invalid %q", in, out)
		}
	})
}

func BenchmarkRedactJSONClean(b *testing.B) {
	s := newScanner(b, Config{})
	in := bigBenignJSON(100)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		s.Redact("application/json", in)
	}
}

func BenchmarkRedactTextClean(b *testing.B) {
	s := newScanner(b, Config{})
	in := bigBenignJSON(100)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		s.Redact("text/plain", in)
	}
}

func BenchmarkDetector(b *testing.B) {
	in := string(bigBenignJSON(100))
	for _, d := range builtins {
		b.Run(d.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				d.find(in, asciiLower(in))
			}
		})
	}
}
