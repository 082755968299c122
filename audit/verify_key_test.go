package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func journalWithCheckpoints(t *testing.T, n int) (string, ed25519.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	j, err := Open(dir, &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 5, Interval: time.Hour, Logger: quiet()})
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := 0; i < n; i++ {
		out := OutcomeSuccess
		if i == 2 {
			out = OutcomeDenied
		}
		if _, err := j.Append(ctx, &Event{Type: "tool.call", Outcome: out, Target: fmt.Sprint("t", i), Actor: Actor{Agent: "bot"}}); err != nil {
			t.Fatal(err)
		}
		if (i+1)%5 == 0 {
			waitSeq(t, j, uint64(i+1+(i+1)/5))
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, key
}

// rewrite edits every entry with edit (may return nil to drop the entry),
// renumbers and recomputes the chain from the start, as root would; no key.
func rewrite(t *testing.T, dir string, edit func(seq uint64, canon []byte) []byte) {
	t.Helper()
	segs, _ := listSegments(dir)
	if len(segs) != 1 {
		t.Fatalf("want one segment, got %d", len(segs))
	}
	b, _ := os.ReadFile(segs[0].path)
	b = bytes.TrimRight(b, "\x00")
	lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	var out bytes.Buffer
	out.Write(lines[0])
	out.WriteByte('\n')
	var prev [32]byte
	var seq uint64 = 1
	for _, l := range lines[1:] {
		_, canon, s, err := parseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		canon = edit(s, append([]byte(nil), canon...))
		if canon == nil {
			continue
		}
		canon = withSeq(append([]byte(`{"seq":0,`), canon[bytes.IndexByte(canon, ',')+1:]...), seq)
		h := ChainHash(prev, canon)
		fmt.Fprintf(&out, "%s %s\n", hex.EncodeToString(h[:]), canon)
		prev = h
		seq++
	}
	if err := os.WriteFile(segs[0].path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// With the auditor's key, the journal's verify checks every checkpoint: a
// journal rewritten from an old entry (its chain recomputed, which needs no
// key) no longer matches what the genuine checkpoints signed, and a
// checkpoint signed by another key is refused. Without the key neither is
// seen: that is what the key is for.
func TestVerifyWithTheKeyCatchesARewrite(t *testing.T) {
	dir, key := journalWithCheckpoints(t, 20)
	pub := key.Public().(ed25519.PublicKey)
	rep, err := VerifyDirWith(dir, &VerifyOptions{PublicKey: pub})
	if err != nil || !rep.OK() || rep.Checkpoints == 0 || rep.SealedUpTo == 0 {
		t.Fatalf("the genuine journal: %+v, %v; want ok and sealed", rep, err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	if rep, _ := VerifyDirWith(dir, &VerifyOptions{PublicKey: other.Public().(ed25519.PublicKey)}); rep.OK() {
		t.Error("checkpoints verified with another key")
	}
	rewrite(t, dir, func(seq uint64, canon []byte) []byte {
		if seq == 3 {
			return bytes.Replace(canon, []byte(`"outcome":"denied"`), []byte(`"outcome":"success"`), 1)
		}
		return canon
	})
	if rep, _ := VerifyDir(dir); !rep.OK() && !strings.Contains(fmt.Sprint(rep.Problems), "durable") {
		t.Logf("without the key: %v", rep.Problems)
	}
	rep, err = VerifyDirWith(dir, &VerifyOptions{PublicKey: pub})
	if err != nil || rep.OK() || !strings.Contains(fmt.Sprint(rep.Problems), "rewritten") {
		t.Fatalf("the rewritten journal with the key: %+v, %v; want the rewrite named", rep, err)
	}
}
