package audit

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// BenchmarkDurableAppend measures durable appends per second with 1, 8 and
// 64 concurrent appenders, and how many fsyncs group commit needed.
func BenchmarkDurableAppend(b *testing.B) {
	for _, appenders := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			j, err := Open(b.TempDir(), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			var next atomic.Int64
			var g errgroup.Group
			b.ResetTimer()
			start := time.Now()
			startSyncs := j.syncs.Load()
			for w := 0; w < appenders; w++ {
				g.Go(func() error {
					for next.Add(1) <= int64(b.N) {
						if _, err := j.Append(context.Background(), testEvent(1)); err != nil {
							return err
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
			el := time.Since(start).Seconds()
			b.ReportMetric(float64(b.N)/el, "events/s")
			b.ReportMetric(float64(j.syncs.Load()-startSyncs)/el, "fsyncs/s")
		})
	}
}

// BenchmarkReader measures how fast a follower (the checkpointer, a syslog
// forwarder) reads entries that are already durable.
func BenchmarkReader(b *testing.B) {
	j, err := Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	const n = 20000
	var g errgroup.Group
	var next atomic.Int64
	for range 64 {
		g.Go(func() error {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				if _, err := j.Append(context.Background(), testEvent(int(i))); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	read := 0
	for read < b.N {
		r, err := j.Reader(1)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < n && read < b.N; i++ {
			if _, err := r.Next(ctx); err != nil {
				b.Fatal(err)
			}
			read++
		}
		r.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}
