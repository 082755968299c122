package vault

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/applianced/applianced/audit"
)

// BenchmarkForTool measures in-process reads: a bbolt read transaction, the
// record decode and one AES-256-GCM open, from all cores at once.
func BenchmarkForTool(b *testing.B) {
	e := newEnv(b, Config{})
	const n = 100
	for i := 0; i < n; i++ {
		e.put(b, fmt.Sprintf("secret-%03d", i), TypeAPIKey, fmt.Sprintf("api-key-value-%064d", i), "tool")
	}
	ctx := context.Background()
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			name := fmt.Sprintf("secret-%03d", next.Add(1)%n)
			v, err := e.v.ForTool(ctx, "tool", name)
			if err != nil {
				b.Error(err)
				return
			}
			clear(v)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
}

// nopAppender stands in for the journal to measure the vault's own write
// path without the journal's fsync.
type nopAppender struct{ seq atomic.Uint64 }

func (a *nopAppender) Append(_ context.Context, e *audit.Event) (uint64, error) {
	e.Seq = a.seq.Add(1)
	return e.Seq, nil
}

// BenchmarkPut measures durable writes (each acknowledged only after
// bbolt's fsync, and after the audit journal's fsync with journal=real),
// with 1 and 32 concurrent writers sharing commits through bbolt's Batch.
func BenchmarkPut(b *testing.B) {
	for _, journal := range []string{"real", "none"} {
		for _, writers := range []int{1, 32} {
			b.Run(fmt.Sprintf("journal=%s/writers=%d", journal, writers), func(b *testing.B) {
				e := newEnv(b, Config{})
				v := e.v
				if journal == "none" {
					if err := e.v.Close(); err != nil {
						b.Fatal(err)
					}
					opts := e.options()
					opts.Audit = &nopAppender{}
					var err error
					if v, err = Open(context.Background(), e.path, e.key, Config{}, opts); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { v.Close() })
				}
				ctx := context.Background()
				value := []byte("a-fairly-typical-api-key-0123456789abcdef")
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for w := 0; w < writers; w++ {
					wg.Go(func() {
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							req := PutRequest{Name: fmt.Sprintf("w%02d-%d", w, i%64), Type: TypeAPIKey, Value: value}
							if _, err := v.Put(ctx, audit.Actor{}, req); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
			})
		}
	}
}

// BenchmarkRecordCheck measures what authenticating a record costs a read:
// the decode and the MAC check of a typical secret's record.
func BenchmarkRecordCheck(b *testing.B) {
	e := newEnv(b, Config{})
	e.put(b, "secret-042", TypeAPIKey, fmt.Sprintf("api-key-value-%064d", 42), "tool")
	raw := e.rawRecord(b, bucketSecrets, "secret-042")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := checkedRecord(e.v.kr, nsSecret, "secret-042", raw); err != nil {
			b.Fatal(err)
		}
	}
}
