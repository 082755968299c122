package dlp

import (
	"bytes"
	"os"
	"path/filepath"
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
	if got, want := ev.Details["dlp"], "card,jwt"; got != want {
		t.Errorf("got dlp detail %q, want %q", got, want)
	}
}
