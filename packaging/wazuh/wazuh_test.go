// Package wazuh_test checks the Wazuh decoders and rules shipped in
// packaging/wazuh against the appliance's event catalogue.
package wazuh_test

import (
	"bytes"
	"encoding/xml"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/applianced/applianced/audit"
)

type field struct {
	Name  string `xml:"name,attr"`
	Value string `xml:",chardata"`
}

type rule struct {
	ID           int     `xml:"id,attr"`
	Level        int     `xml:"level,attr"`
	Frequency    int     `xml:"frequency,attr"`
	Timeframe    int     `xml:"timeframe,attr"`
	IfSid        string  `xml:"if_sid"`
	IfMatchedSid string  `xml:"if_matched_sid"`
	DecodedAs    string  `xml:"decoded_as"`
	SameField    string  `xml:"same_field"`
	Fields       []field `xml:"field"`
	Description  string  `xml:"description"`
}

type group struct {
	Name  string `xml:"name,attr"`
	Rules []rule `xml:"rule"`
}

type decoder struct {
	Name          string `xml:"name,attr"`
	ProgramName   string `xml:"program_name"`
	PluginDecoder string `xml:"plugin_decoder"`
}

// parse reads a Wazuh XML file, which may hold several top-level
// elements, and fails on anything that is not well-formed.
func parse(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := append(append([]byte("<root>"), b...), "</root>"...)
	d := xml.NewDecoder(bytes.NewReader(doc))
	d.Strict = true
	for {
		if _, err := d.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("%s is not well-formed: %v", path, err)
		}
	}
	if err := xml.Unmarshal(doc, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func rules(t *testing.T) map[int]rule {
	var doc struct {
		Groups []group `xml:"group"`
	}
	parse(t, "applianced_rules.xml", &doc)
	out := map[int]rule{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if _, dup := out[r.ID]; dup {
				t.Errorf("rule id %d appears twice", r.ID)
			}
			out[r.ID] = r
		}
	}
	return out
}

func TestDecoderFeedsTheJSONDecoder(t *testing.T) {
	var doc struct {
		Decoders []decoder `xml:"decoder"`
	}
	parse(t, "applianced_decoders.xml", &doc)
	if len(doc.Decoders) != 1 {
		t.Fatalf("got %d decoders, want 1", len(doc.Decoders))
	}
	d := doc.Decoders[0]
	if d.Name != "applianced" || d.ProgramName != "^applianced$" || d.PluginDecoder != "JSON_Decoder" {
		t.Errorf("got %+v, want the applianced program name handed to JSON_Decoder", d)
	}
}

func TestRulesAreConsistent(t *testing.T) {
	rs := rules(t)
	for id, r := range rs {
		if id < 100000 || id > 120000 {
			t.Errorf("rule %d is outside the custom range 100000-120000", id)
		}
		if r.Level < 0 || r.Level > 15 {
			t.Errorf("rule %d: level %d", id, r.Level)
		}
		if r.Description == "" {
			t.Errorf("rule %d has no description", id)
		}
		for _, ref := range strings.Fields(strings.ReplaceAll(r.IfSid+" "+r.IfMatchedSid, ",", " ")) {
			found := false
			for other := range rs {
				if ref == strings.TrimSpace(strconv.Itoa(other)) {
					found = true
				}
			}
			if !found {
				t.Errorf("rule %d refers to rule %s, which does not exist", id, ref)
			}
		}
		if r.IfSid == "" && r.IfMatchedSid == "" && r.DecodedAs != "applianced" {
			t.Errorf("rule %d is not tied to the applianced decoder", id)
		}
	}
}

// typeRules maps each event type to the rule matching it.
func typeRules(t *testing.T, rs map[int]rule) map[string]rule {
	out := map[string]rule{}
	re := regexp.MustCompile(`^\^([a-z0-9_.]+)\$$`)
	for _, r := range rs {
		for _, f := range r.Fields {
			if f.Name == "event.type" {
				m := re.FindStringSubmatch(f.Value)
				if m == nil {
					t.Errorf("rule %d: event.type %q is not ^type$", r.ID, f.Value)
					continue
				}
				out[m[1]] = r
			}
		}
	}
	return out
}

func TestEveryCatalogueTypeHasARule(t *testing.T) {
	rs := rules(t)
	byType := typeRules(t, rs)
	for _, et := range audit.Catalogue {
		r, ok := byType[et.Type]
		if !ok {
			t.Errorf("event type %q has no rule", et.Type)
			continue
		}
		if r.Level != et.Level {
			t.Errorf("rule %d for %q: got level %d, want the catalogue's %d", r.ID, et.Type, r.Level, et.Level)
		}
	}
	for typ, r := range byType {
		if _, ok := audit.LookupEventType(typ); !ok {
			t.Errorf("rule %d matches %q, which is not in the catalogue", r.ID, typ)
		}
	}
}

// TestSecurityRules: the alerts the issue names exist with a level a human
// sees (8 or more).
func TestSecurityRules(t *testing.T) {
	rs := rules(t)
	byType := typeRules(t, rs)
	for _, typ := range []string{"agent.blocked", "approval.deny", "net.egress_blocked", "audit.tamper", "audit.target_down"} {
		if r, ok := byType[typ]; !ok || r.Level < 8 {
			t.Errorf("got rule %+v for %s, want one with level >= 8", r, typ)
		}
	}
	login := byType["auth.login"]
	var failure, brute *rule
	for _, r := range rs {
		if r.IfSid == strconv.Itoa(login.ID) {
			for _, f := range r.Fields {
				if f.Name == "event.outcome" && f.Value == "^denied$" {
					failure = &r
				}
			}
		}
	}
	if failure == nil {
		t.Fatal("no rule for a failed login")
	}
	for _, r := range rs {
		if r.IfMatchedSid == strconv.Itoa(failure.ID) && r.Frequency > 1 && r.Timeframe > 0 && r.SameField == "event.actor.user" {
			brute = &r
		}
	}
	if brute == nil || brute.Level < 10 {
		t.Errorf("got %+v, want a frequency rule on failed logins of one user, level >= 10", brute)
	}
}

// TestEveryTypeInTheSourceIsCatalogued walks the module's Go files for
// event types written as literals and checks each is in the catalogue
// (and so has a rule).
func TestEveryTypeInTheSourceIsCatalogued(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	lit := regexp.MustCompile(`(?s)Event\{[^}]*?Type:\s*"([^"]+)"|\.Type\s*=\s*"([^"]+)"|\.Type, [^=]*=\s*"([a-z_]+\.[a-z_]+)"`)
	seen := map[string]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllSubmatch(b, -1) {
			for _, g := range m[1:] {
				if len(g) > 0 {
					rel, _ := filepath.Rel(root, path)
					seen[string(g)] = rel
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) < 5 {
		t.Fatalf("found only %d event types in the source: the pattern is broken", len(seen))
	}
	for typ, where := range seen {
		if prefix, ok := strings.CutSuffix(typ, "."); ok {
			// "approval." + decision: the family must be catalogued.
			found := false
			for _, et := range audit.Catalogue {
				found = found || strings.HasPrefix(et.Type, prefix+".")
			}
			if !found {
				t.Errorf("%s builds event types %q…, and the catalogue has none", where, typ)
			}
			continue
		}
		if _, ok := audit.LookupEventType(typ); !ok {
			t.Errorf("%s uses event type %q, which is not in audit.Catalogue", where, typ)
		}
	}
}
