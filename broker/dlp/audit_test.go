package dlp

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/applianced/applianced/audit"
)

func TestAppenderKeepsSecretsOutOfTheJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := audit.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	a := &Appender{Next: j, Scanner: newScanner(t, Config{})}
	ev := &audit.Event{
		Type: "tool.call", Outcome: audit.OutcomeFailure, Target: "tickets",
		Reason:  "upstream said: invalid token " + testJWT,
		Details: map[string]string{"path": "/cards/4111111111111111", "id": "1732579200123"},
	}
	if _, err := a.Append(t.Context(), ev); err != nil {
		t.Fatalf("Append: %v", err)
	}
	var all []byte
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		all = append(all, b...)
	}
	for _, secret := range []string{testJWT, "4111111111111111"} {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("the journal holds %q", secret)
		}
	}
	if !bytes.Contains(all, []byte("1732579200123")) {
		t.Error("an ordinary id was redacted")
	}
	if got, want := ev.Details["dlp_audit"], "card,jwt"; got != want {
		t.Errorf("got dlp_audit detail %q, want %q", got, want)
	}
}

// What DLP found in a tool's answer (a tool.dlp event's "dlp") stays as it
// is when the record itself also holds something DLP finds; the actor,
// source and request id are scanned like the rest.
func TestAppenderKeepsTheAnswersFindingsAndScansEveryField(t *testing.T) {
	dir := t.TempDir()
	j, err := audit.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := &Appender{Next: j, Scanner: s}
	ev := &audit.Event{
		Type: "tool.dlp", Outcome: audit.OutcomeSuccess, Target: "tickets",
		Actor: audit.Actor{User: testJWT}, RequestID: testJWT, Source: testJWT,
		Details: map[string]string{"dlp": "private_key,card", "path": "/x/" + testJWT},
	}
	if _, err := a.Append(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.Details["dlp"] != "private_key,card" || ev.Details["dlp_audit"] != "jwt" {
		t.Errorf("dlp %q, dlp_audit %q; want the answer's findings kept and the record's apart", ev.Details["dlp"], ev.Details["dlp_audit"])
	}
	for _, f := range []string{ev.Actor.User, ev.RequestID, ev.Source} {
		if strings.Contains(f, testJWT) {
			t.Errorf("a field kept the token: %q", f)
		}
	}
}
