package audit

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// BenchmarkDurableAppend measures durable appends per second with 1, 8 and
// 64 concurrent appenders, how many fsyncs group commit needed, and the p50
// and p99 latency of one append; with zeros written ahead of the entries
// (as the journal runs) and without (ahead=off), to show what that buys.
func BenchmarkDurableAppend(b *testing.B) {
	for _, appenders := range []int{1, 8, 64} {
		for _, ahead := range []bool{true, false} {
			name := fmt.Sprintf("appenders=%d", appenders)
			if !ahead {
				name += "/ahead=off"
			}
			b.Run(name, func(b *testing.B) { benchAppend(b, appenders, ahead) })
		}
	}
}

func benchAppend(b *testing.B, appenders int, ahead bool) {
	j, err := Open(b.TempDir(), &Options{noAhead: !ahead})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	time.Sleep(50 * time.Millisecond) // let the first zeros be written
	var next atomic.Int64
	var g errgroup.Group
	lat := make([]time.Duration, b.N)
	b.ResetTimer()
	start := time.Now()
	startSyncs := j.syncs.Load()
	for w := 0; w < appenders; w++ {
		g.Go(func() error {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				t0 := time.Now()
				if _, err := j.Append(context.Background(), testEvent(1)); err != nil {
					return err
				}
				lat[i-1] = time.Since(t0)
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
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
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
