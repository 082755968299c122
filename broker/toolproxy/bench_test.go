package toolproxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/dlp"
	"github.com/applianced/applianced/internal/procs"
)

// BenchmarkProxyVsDirect measures, in one run against the same loopback
// upstream, the latency of sequential calls made directly and through the
// proxy (interleaved, so load on the machine hits both alike), and the
// throughput of 8 and of 64 concurrent callers each way. The proxy path
// includes token check (a stand-in costing about what the broker's check of
// a token seen before does), route, risk counters, the vault fetch of the
// credential, DLP on the JSON answer and on the audit details, and two
// fsynced journal appends per call (the decision before the call is sent,
// the outcome before the answer).
//
// The upstream answers a fixed JSON document and does no work of its own,
// so the ratio is the worst case: all the time a call takes is HTTP
// plumbing, which the proxy doubles. For scale, the same rounds also go
// through a bare net/http/httputil.ReverseProxy (no checks, no journal):
// the best any HTTP proxy built on net/http can do on this machine.
//
// Metrics: direct-p50-µs, proxy-p50-µs, added-p50-µs; for 8 and 64
// callers, direct, bare-proxy and proxy requests per second; ratio-8 and
// ratio-64 (proxy/direct) and bare-ratio-64 (bare proxy/direct); and, with
// 64 callers, the CPU a call costs beyond a direct one through the proxy
// and through the bare proxy (proxy-added-cpu-µs/call, bare-added-...).
func BenchmarkProxyVsDirect(b *testing.B) {
	defer procs.ForBenchmark()() // as applianced serve does
	bp := newBenchPair(b, jsonOK(benchBody))
	target, _ := url.Parse(bp.u.URL)
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:  &http.Transport{MaxIdleConnsPerHost: 128},
		BufferPool: &bufferPool{},
	})
	b.Cleanup(bare.Close)
	viaBare := func() error {
		req, _ := http.NewRequest("GET", bare.URL+"/api/tickets/1", nil)
		req.Header.Set("X-Api-Key", toolSecret)
		return doCall(bp.client, req)
	}
	for range 50 {
		_ = viaBare()
	}
	bp.latency(b)
	for _, workers := range []int{8, 64} {
		per := 4000 / workers
		// Alternate short rounds so that the machine's load hits all three
		// alike; report the medians.
		var drs, brs, prs, dcs, bcs, pcs []float64
		for range 5 {
			r, c := rate(b, workers, per, bp.direct)
			drs, dcs = append(drs, r), append(dcs, c)
			r, c = rate(b, workers, per, viaBare)
			brs, bcs = append(brs, r), append(bcs, c)
			r, c = rate(b, workers, per, bp.proxied)
			prs, pcs = append(prs, r), append(pcs, c)
		}
		dr, br, pr := median(drs), median(brs), median(prs)
		b.ReportMetric(dr, fmt.Sprintf("direct-%d-req/s", workers))
		b.ReportMetric(br, fmt.Sprintf("bare-%d-req/s", workers))
		b.ReportMetric(pr, fmt.Sprintf("proxy-%d-req/s", workers))
		b.ReportMetric(pr/dr, fmt.Sprintf("ratio-%d", workers))
		if workers == 64 {
			b.ReportMetric(br/dr, "bare-ratio-64")
			// What a call costs the machine beyond a direct one: the
			// proxy's own work, and a bare reverse proxy's for scale.
			b.ReportMetric(median(pcs)-median(dcs), "proxy-added-cpu-µs/call")
			b.ReportMetric(median(bcs)-median(dcs), "bare-added-cpu-µs/call")
		}
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkProxyVsDirectSlowUpstream is the same comparison against an
// upstream that takes 1 ms to answer, as a tool that looks something up in
// its database does: the added latency is the proxy's, the throughput is
// what the callers can get when the tool, not the plumbing, sets the pace.
//
// Metrics: direct-p50-µs, proxy-p50-µs, added-p50-µs; for 8 and 64
// callers, direct and proxy requests per second and ratio-8, ratio-64.
func BenchmarkProxyVsDirectSlowUpstream(b *testing.B) {
	defer procs.ForBenchmark()()
	answer := jsonOK(benchBody)
	bp := newBenchPair(b, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		answer(w, r)
	})
	bp.latency(b)
	for _, workers := range []int{8, 64} {
		per := 2000 / workers
		var drs, prs []float64
		for range 5 {
			r, _ := rate(b, workers, per, bp.direct)
			drs = append(drs, r)
			r, _ = rate(b, workers, per, bp.proxied)
			prs = append(prs, r)
		}
		dr, pr := median(drs), median(prs)
		b.ReportMetric(dr, fmt.Sprintf("direct-%d-req/s", workers))
		b.ReportMetric(pr, fmt.Sprintf("proxy-%d-req/s", workers))
		b.ReportMetric(pr/dr, fmt.Sprintf("ratio-%d", workers))
	}
	b.ReportMetric(0, "ns/op")
}

const benchBody = `{"id": 1, "title": "Printer on floor 2 jams", "status": "open", "created_at": "2026-11-25T10:00:00Z", "tags": ["hw", "floor-2"]}`

// benchPair is one upstream, the proxy in front of it, and a call of the
// same ticket each way.
type benchPair struct {
	u               *upstream
	client          *http.Client
	direct, proxied func() error
}

// newBenchPair starts an upstream answering with fn (it keeps no record of
// the requests, which would grow the heap both ways alike over a long run)
// and the proxy with its tool, and warms both paths.
func newBenchPair(b *testing.B, fn http.HandlerFunc) *benchPair {
	u := &upstream{Server: httptest.NewServer(fn)}
	b.Cleanup(u.Close)
	// Wired as the daemon wires it: one DLP scanner for the answers and
	// for the audit details on their way to the journal.
	scanner, err := dlp.New(dlp.Config{})
	if err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, envOpts{tools: []Tool{stdTool(u.URL)}, dlp: scanner, secrets: map[string]string{"tickets-key": toolSecret},
		wrap: func(j audit.Appender) audit.Appender { return &dlp.Appender{Next: j, Scanner: scanner} }})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Groups: []string{"helpdesk"}, Scopes: allScopes(), JTI: "jti-1"}, "tickets")
	bp := &benchPair{u: u, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}}
	b.Cleanup(bp.client.CloseIdleConnections)
	bp.direct = func() error {
		req, _ := http.NewRequest("GET", u.URL+"/api/tickets/1", nil)
		req.Header.Set("X-Api-Key", toolSecret)
		return doCall(bp.client, req)
	}
	bp.proxied = func() error {
		req, _ := http.NewRequest("GET", e.srv.URL+"/v1/tools/tickets/tickets/1", nil)
		req.Header.Set("Authorization", "Bearer "+agentToken)
		return doCall(bp.client, req)
	}
	for range 50 { // warm connections and caches
		_ = bp.direct()
		_ = bp.proxied()
	}
	return bp
}

// latency times b.N sequential calls each way, interleaved so that load on
// the machine hits both alike, and reports their p50s and the difference.
func (bp *benchPair) latency(b *testing.B) {
	var dLat, pLat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if err := bp.direct(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := bp.proxied(); err != nil {
			b.Fatal(err)
		}
		dLat = append(dLat, t1.Sub(t0))
		pLat = append(pLat, time.Since(t1))
	}
	b.StopTimer()
	dp, pp := p50(dLat), p50(pLat)
	b.ReportMetric(float64(dp.Microseconds()), "direct-p50-µs")
	b.ReportMetric(float64(pp.Microseconds()), "proxy-p50-µs")
	b.ReportMetric(float64((pp - dp).Microseconds()), "added-p50-µs")
}

// rate runs per calls of f in each of workers goroutines and returns the
// calls per second and the process's CPU time per call (callers, proxy and
// upstream together).
func rate(b *testing.B, workers, per int, f func() error) (perSecond, cpuMicros float64) {
	var wg sync.WaitGroup
	cpu0 := cpuTime(b)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				if err := f(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	n := float64(workers * per)
	return n / time.Since(start).Seconds(), float64((cpuTime(b) - cpu0).Microseconds()) / n
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bufferPool lets the bare reverse proxy reuse its copy buffers, as a
// tuned one would.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func doCall(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return &statusError{resp.StatusCode}
	}
	return nil
}

type statusError struct{ code int }

func (e *statusError) Error() string { return http.StatusText(e.code) }

func p50(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
