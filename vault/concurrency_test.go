package vault

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// TestOnlineRekeyAndRestore rekeys with re-encryption and restores while
// readers and writers keep going: every read answers the value last
// written for that name (or, after the restore, the backup's), and nothing
// fails.
func TestOnlineRekeyAndRestore(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	const names = 16
	for i := 0; i < names; i++ {
		e.put(t, fmt.Sprintf("s%02d", i), TypeAPIKey, fmt.Sprintf("v%02d-0", i), "tool")
	}
	var backup bytes.Buffer
	if _, err := e.v.Backup(ctx, operator, &backup); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var reads, writes atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Go(func() { // readers
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("s%02d", (g*7+i)%names)
				v, err := e.v.ForTool(ctx, "tool", name)
				if err != nil {
					t.Errorf("ForTool(%s) during rekey/restore: %v", name, err)
					return
				}
				if !bytes.HasPrefix(v, []byte("v"+name[1:]+"-")) {
					t.Errorf("ForTool(%s) = %q: another secret's value", name, v)
					return
				}
				reads.Add(1)
			}
		})
		wg.Go(func() { // writers
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("s%02d", (g*5+i)%names)
				if _, err := e.v.Rotate(ctx, operator, name, fmt.Appendf(nil, "v%s-%d", name[1:], i)); err != nil {
					t.Errorf("Rotate(%s) during rekey/restore: %v", name, err)
					return
				}
				writes.Add(1)
			}
		})
	}
	for round := 0; round < 3; round++ {
		if _, err := e.v.Rekey(ctx, operator, true); err != nil {
			t.Errorf("Rekey: %v", err)
		}
		if _, err := e.v.Restore(ctx, operator, bytes.NewReader(backup.Bytes()), nil); err != nil {
			t.Errorf("Restore: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	if reads.Load() == 0 || writes.Load() == 0 {
		t.Fatalf("no concurrent work happened: %d reads, %d writes", reads.Load(), writes.Load())
	}
	t.Logf("%d reads and %d writes alongside 3 rekeys and 3 restores", reads.Load(), writes.Load())
}

// TestSystemKeyCreatedOnce has many callers get-or-create one system key at
// once: they all get the same key, and it has one version.
func TestSystemKeyCreatedOnce(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	const callers = 16
	keys := make([][]byte, callers)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := e.v.SystemKey(ctx, "jwt-signing", func() ([]byte, error) { return fmt.Appendf(nil, "key-from-%02d", i), nil })
			if err != nil {
				t.Errorf("caller %d: %v", i, err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for i, k := range keys {
		if !bytes.Equal(k, keys[0]) {
			t.Errorf("caller %d got %q, caller 0 got %q", i, k, keys[0])
		}
	}
	vers, err := e.v.SystemKeyVersions(ctx, "jwt-signing")
	if err != nil || len(vers) != 1 {
		t.Fatalf("versions = %d, %v; want 1", len(vers), err)
	}
	if _, err := e.v.PutSystemKey(ctx, operator, "jwt-signing", []byte("rotated")); err != nil {
		t.Fatal(err)
	}
	vers, _ = e.v.SystemKeyVersions(ctx, "jwt-signing")
	if len(vers) != 2 || string(vers[0].Key) != "rotated" || !bytes.Equal(vers[1].Key, keys[0]) {
		t.Errorf("after a rotation: %d versions, newest %q", len(vers), vers[0].Key)
	}
	if list, _ := e.v.List(ctx, operator); len(list) != 0 {
		t.Errorf("a system key is listed as a secret: %+v", list)
	}
}
