package dlp

import (
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestReloadSwapsDetectorSet(t *testing.T) {
	const (
		a = "order ORD-12345 for EMP-654321, paid from " + testIBAN
	)
	s := newScanner(t, Config{Detectors: []DetectorConfig{{Name: "order_id", Pattern: `\bORD-[0-9]{5}\b`}}})
	steps := []struct {
		name       string
		cfg        Config
		wantErr    bool
		want       string
		wantActive []string // site detectors expected after the step
	}{
		{
			name: "set A",
			want: "order [REDACTED:order_id] for EMP-654321, paid from [REDACTED:iban]",
		},
		{
			name: "reload to set B, IBAN off",
			cfg: Config{
				Disable:   []string{IBAN},
				Detectors: []DetectorConfig{{Name: "employee_id", Pattern: `\bEMP-[0-9]{6}\b`}},
			},
			want: "order ORD-12345 for [REDACTED:employee_id], paid from " + testIBAN,
		},
		{
			name:    "bad pattern refused, B kept",
			cfg:     Config{Detectors: []DetectorConfig{{Name: "broken", Pattern: `((`}}},
			wantErr: true,
			want:    "order ORD-12345 for [REDACTED:employee_id], paid from " + testIBAN,
		},
		{
			name:    "unknown disable refused, B kept",
			cfg:     Config{Disable: []string{"cards"}, Detectors: []DetectorConfig{{Name: "order_id", Pattern: `\bORD-[0-9]{5}\b`}}},
			wantErr: true,
			want:    "order ORD-12345 for [REDACTED:employee_id], paid from " + testIBAN,
		},
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if i > 0 {
				err := s.Reload(st.cfg)
				if (err != nil) != st.wantErr {
					t.Fatalf("got Reload error %v, want error: %v", err, st.wantErr)
				}
			}
			if got, _ := s.RedactText([]byte(a)); string(got) != st.want {
				t.Errorf("got %q, want %q", got, st.want)
			}
			out, _, err := s.RedactJSON([]byte(`{"note": "` + a + `"}`))
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"note":"` + st.want + `"}`; string(out) != want {
				t.Errorf("got JSON %s, want %s", out, want)
			}
		})
	}
}

// TestReloadDisablesCardNumbersInJSON checks that the JSON number path
// follows the reloaded set too, not only the text path.
func TestReloadDisablesCardNumbersInJSON(t *testing.T) {
	s := newScanner(t, Config{})
	doc := []byte(`{"pan": 4111111111111111}`)
	if out, _, _ := s.RedactJSON(doc); !strings.Contains(string(out), "[REDACTED:card]") {
		t.Fatalf("got %s, want the card number redacted", out)
	}
	if err := s.Reload(Config{Disable: []string{Card}}); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := s.RedactJSON(doc); string(out) != string(doc) {
		t.Errorf("got %s, want %s unchanged with card off", out, doc)
	}
}

// TestReloadConcurrentWithRedaction runs redactions while the set is
// swapped: each redaction sees one set whole (under -race, no data race).
func TestReloadConcurrentWithRedaction(t *testing.T) {
	cfgA := Config{Detectors: []DetectorConfig{{Name: "tag_a", Pattern: `\bTAG-[0-9]{4}\b`}}}
	cfgB := Config{Detectors: []DetectorConfig{{Name: "tag_b", Pattern: `\bTAG-[0-9]{4}\b`}}}
	s := newScanner(t, cfgA)
	const in = "TAG-1234 and TAG-5678"
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, 1)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, _ := s.RedactString(in)
				if got != "[REDACTED:tag_a] and [REDACTED:tag_a]" && got != "[REDACTED:tag_b] and [REDACTED:tag_b]" {
					select {
					case errs <- got:
					default:
					}
				}
			}
		})
	}
	for i := range 200 {
		cfg := cfgA
		if i%2 == 0 {
			cfg = cfgB
		}
		if err := s.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case got := <-errs:
		t.Errorf("got %q, a redaction that mixed two detector sets", got)
	default:
	}
}

func TestZeroScannerFindsNothing(t *testing.T) {
	var s Scanner
	if got, res := s.RedactString(testJWT); got != testJWT || res.Found() {
		t.Errorf("got %q %v, want the input unchanged", got, res)
	}
	if got := s.Detectors(); len(got) != 0 {
		t.Errorf("got detectors %v, want none", got)
	}
}

// TestCleanMemoryStartsOverOnReload: a value found clean is remembered,
// and a reload whose new detector matches it finds it.
func TestCleanMemoryStartsOverOnReload(t *testing.T) {
	s := newScanner(t, Config{})
	const v = "ref EMP-654321"
	for range 2 { // the second time from memory
		if got, res := s.RedactString(v); got != v || res.Found() {
			t.Fatalf("before reload: got %q %v, want it untouched", got, res)
		}
	}
	if !s.load().isClean(v) {
		t.Fatal("a clean short value was not remembered")
	}
	if err := s.Reload(Config{Detectors: []DetectorConfig{{Name: "employee_id", Pattern: `\bEMP-[0-9]{6}\b`}}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.RedactString(v); got != "ref [REDACTED:employee_id]" {
		t.Fatalf("after reload: got %q, want the new detector to apply", got)
	}
}

func TestCleanMemoryIsBounded(t *testing.T) {
	s := newScanner(t, Config{})
	for i := range cleanMaxEntries + 10 {
		s.RedactString("value-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strconv.Itoa(i))
	}
	n := s.load().clean.len()
	if n == 0 || n > cleanMaxEntries {
		t.Fatalf("remembered %d values, want between 1 and %d", n, cleanMaxEntries)
	}
	long := strings.Repeat("y", cleanMaxLen+1)
	s.RedactString(long)
	if s.load().isClean(long) {
		t.Fatal("a value over cleanMaxLen was remembered")
	}
}
