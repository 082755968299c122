package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// memKeys is a KeySource for these tests: the vault's get-or-create
// contract in a map.
type memKeys struct {
	mu   sync.Mutex
	keys map[string][]byte
	err  error
}

func (m *memKeys) SystemKey(_ context.Context, name string, create func() ([]byte, error)) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	if m.keys == nil {
		m.keys = map[string][]byte{}
	}
	if k, ok := m.keys[name]; ok {
		return k, nil
	}
	k, err := create()
	if err != nil {
		return nil, err
	}
	m.keys[name] = k
	return k, nil
}

func TestCheckpointKeyIsStableAndSignaturesVerify(t *testing.T) {
	ks := &memKeys{}
	k1, err := LoadCheckpointKey(context.Background(), ks)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadCheckpointKey(context.Background(), ks)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) {
		t.Fatal("got a different key on the second load, want the stored one")
	}
	pub := k1.Public().(ed25519.PublicKey)
	got, err := ParsePublicKey(FormatPublicKey(pub))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("got %v, %v; want the key back", got, err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	hash := [32]byte{1, 2, 3}
	for _, tc := range []struct {
		name    string
		mutate  func(*Event)
		key     ed25519.PublicKey
		wantErr error
	}{
		{"good", func(*Event) {}, pub, nil},
		{"wrong key", func(*Event) {}, other.Public().(ed25519.PublicKey), ErrBadSignature},
		{"seq changed", func(e *Event) { e.Details[DetailCheckpointSeq] = "8" }, pub, ErrBadSignature},
		{"hash changed", func(e *Event) { e.Details[DetailCheckpointHash] = strings.Repeat("00", 32) }, pub, ErrBadSignature},
		{"final forged", func(e *Event) { e.Details[DetailCheckpointFinal] = "true" }, pub, ErrBadSignature},
		{"sig garbage", func(e *Event) { e.Details[DetailCheckpointSig] = "!!" }, pub, ErrBadCheckpoint},
		{"no seq", func(e *Event) { delete(e.Details, DetailCheckpointSeq) }, pub, ErrBadCheckpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := NewCheckpointEvent(k1, Checkpoint{Seq: 7, Hash: hash, Time: time.Now(), Interval: time.Minute})
			tc.mutate(ev)
			cp, err := ParseCheckpoint(ev)
			if err == nil {
				err = cp.Verify(tc.key)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestLoadCheckpointKeyRefusesAWrongSize(t *testing.T) {
	ks := &memKeys{keys: map[string][]byte{CheckpointKeyName: make([]byte, 31), HMACKeyName: make([]byte, 16)}}
	if _, err := LoadCheckpointKey(context.Background(), ks); !errors.Is(err, ErrBadKey) {
		t.Errorf("got %v, want ErrBadKey", err)
	}
	if _, err := NewHasher(context.Background(), ks); !errors.Is(err, ErrBadKey) {
		t.Errorf("got %v, want ErrBadKey", err)
	}
	boom := errors.New("vault sealed")
	if _, err := NewHasher(context.Background(), &memKeys{err: boom}); !errors.Is(err, boom) {
		t.Errorf("got %v, want the vault's error", err)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestCheckpointerSealsEveryNAndAtClose runs a Checkpointer on a real
// journal and checks its checkpoints against the entries they cover.
func TestCheckpointerSealsEveryNAndAtClose(t *testing.T) {
	j, err := Open(t.TempDir(), &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 10, Interval: time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	for i := 0; i < 35; i++ {
		if i == 5 {
			// Started late on purpose: entries appended since
			// NewCheckpointer count as well.
			go func() { done <- c.Run(ctx) }()
		}
		if _, err := j.Append(ctx, &Event{Type: "tool.call", Outcome: OutcomeSuccess, Target: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if (i+1)%10 == 0 {
			// Let the checkpointer seal these before more come: how far
			// behind it runs is up to the scheduler, and a checkpointer
			// catching up at Close seals only once.
			waitSeq(t, j, uint64(i+1+(i+1)/10))
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r, _ := j.Reader(1)
	defer r.Close()
	hashes := map[uint64][32]byte{}
	var cps []*Checkpoint
	for s := uint64(1); s <= j.LastSeq(); s++ {
		e, err := r.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		hashes[e.Seq] = e.Hash
		if e.Event.Type == TypeCheckpoint {
			cp, err := ParseCheckpoint(&e.Event)
			if err != nil {
				t.Fatal(err)
			}
			if err := cp.Verify(c.PublicKey()); err != nil {
				t.Error(err)
			}
			if hashes[cp.Seq] != cp.Hash {
				t.Errorf("checkpoint at %d: got hash of seq %d wrong", e.Seq, cp.Seq)
			}
			cps = append(cps, cp)
		}
	}
	if len(cps) < 4 {
		t.Fatalf("got %d checkpoints for 35 entries every 10 plus the final, want at least 4", len(cps))
	}
	last := cps[len(cps)-1]
	if !last.Final || last.Seq != j.LastSeq()-1 {
		t.Errorf("got last checkpoint %+v, want final covering seq %d", last, j.LastSeq()-1)
	}
}

// waitSeq waits until the journal holds seq.
func waitSeq(t *testing.T, j *Journal, seq uint64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); j.LastSeq() < seq; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("journal holds seq %d after 10 s, want %d", j.LastSeq(), seq)
		}
	}
}

func TestHasherIsKeyedAndStable(t *testing.T) {
	ctx := context.Background()
	ks := &memKeys{}
	h1, err := NewHasher(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := NewHasher(ctx, ks)
	other, _ := NewHasher(ctx, &memKeys{})
	a := h1.Sum("hunter2")
	if !strings.HasPrefix(a, HMACPrefix) || len(a) != len(HMACPrefix)+64 {
		t.Errorf("got %q, want hmac-sha256: and 64 hex digits", a)
	}
	if strings.Contains(a, "hunter2") {
		t.Error("the value appears in its HMAC")
	}
	if h2.Sum("hunter2") != a {
		t.Error("got a different HMAC with the same key")
	}
	if other.Sum("hunter2") == a {
		t.Error("got the same HMAC under another key: not keyed")
	}
	if h1.Sum("hunter3") == a {
		t.Error("got the same HMAC for another value")
	}
}
