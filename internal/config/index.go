package config

import (
	"fmt"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// keyIndex maps every key path of a document ("tool[0].route[1].path") to the
// line it is written on, and every line to the expression written there, so
// errors from the decoder and from Validate can name file, line and key.
type keyIndex struct {
	lines map[string]int // path -> line
	exprs []expr         // top-level expressions in order
}

type expr struct {
	path          string
	line, endLine int
	start, end    int    // byte offsets of the whole expression
	value         string // the value as written, for locating errors without a position
	isTableHeader bool
}

type syntaxError struct {
	line int
	msg  string
}

func indexKeys(data []byte) (*keyIndex, *syntaxError) {
	idx := &keyIndex{lines: map[string]int{}}
	var p unstable.Parser
	p.Reset(data)
	arrays := map[string]int{} // array-of-tables path (unindexed) -> count so far
	prefix := ""
	resolve := func(parts []string, arrayHeader bool) string {
		cur := ""
		for i, part := range parts {
			if cur != "" {
				cur += "."
			}
			cur += quoteKey(part)
			last := i == len(parts)-1
			if last && arrayHeader {
				arrays[cur]++
				cur = fmt.Sprintf("%s[%d]", cur, arrays[cur]-1)
			} else if n, ok := arrays[cur]; ok {
				cur = fmt.Sprintf("%s[%d]", cur, n-1)
			}
		}
		return cur
	}
	for p.NextExpression() {
		e := p.Expression()
		parts, first := keyParts(e)
		if first == nil {
			continue
		}
		line := p.Shape(first.Raw).Start.Line
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			prefix = resolve(parts, e.Kind == unstable.ArrayTable)
			if _, seen := idx.lines[prefix]; !seen {
				idx.lines[prefix] = line
			}
			idx.exprs = append(idx.exprs, expr{path: prefix, line: line, endLine: line, isTableHeader: true})
		case unstable.KeyValue:
			path := joinPath(prefix, parts)
			idx.lines[path] = line
			sh := p.Shape(e.Raw)
			var raw string
			if v := e.Value(); v != nil {
				if v.Raw.Length > 0 {
					raw = string(p.Raw(v.Raw))
				} else {
					raw = string(v.Data)
				}
			}
			idx.exprs = append(idx.exprs, expr{path: path, line: line, endLine: sh.End.Line, start: sh.Start.Offset, end: sh.End.Offset, value: raw})
			idx.indexValue(&p, path, e.Value())
		}
	}
	if err := p.Error(); err != nil {
		line := 0
		if pe, ok := err.(*unstable.ParserError); ok && len(pe.Highlight) > 0 {
			line = lineOfSubslice(data, pe.Highlight)
			return nil, &syntaxError{line: line, msg: pe.Message}
		}
		return nil, &syntaxError{msg: err.Error()}
	}
	return idx, nil
}

// indexValue records the keys inside inline tables and the elements of
// arrays (path[i]) at their lines.
func (idx *keyIndex) indexValue(p *unstable.Parser, path string, v *unstable.Node) {
	if v == nil {
		return
	}
	switch v.Kind {
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			kv := it.Node()
			parts, first := keyParts(kv)
			if first == nil {
				continue
			}
			sub := joinPath(path, parts)
			idx.lines[sub] = p.Shape(first.Raw).Start.Line
			idx.indexValue(p, sub, kv.Value())
		}
	case unstable.Array:
		it := v.Children()
		for i := 0; it.Next(); i++ {
			el := it.Node()
			sub := fmt.Sprintf("%s[%d]", path, i)
			if el.Raw.Length > 0 {
				idx.lines[sub] = p.Shape(el.Raw).Start.Line
			} else if l, ok := idx.lines[path]; ok {
				idx.lines[sub] = l
			}
			idx.indexValue(p, sub, el)
		}
	}
}

func keyParts(n *unstable.Node) ([]string, *unstable.Node) {
	var parts []string
	var first *unstable.Node
	it := n.Key()
	for it.Next() {
		k := it.Node()
		if first == nil {
			first = k
		}
		parts = append(parts, string(k.Data))
	}
	return parts, first
}

func joinPath(prefix string, parts []string) string {
	q := make([]string, len(parts))
	for i, s := range parts {
		q[i] = quoteKey(s)
	}
	if prefix == "" {
		return strings.Join(q, ".")
	}
	return prefix + "." + strings.Join(q, ".")
}

// quoteKey writes a key part as a path element; parts with dots or spaces
// (group names in [ldap.group_roles]) are quoted.
func quoteKey(s string) string {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Sprintf("%q", s)
		}
	}
	return s
}

func lineOfSubslice(doc, sub []byte) int {
	off := cap(doc) - cap(sub)
	if off < 0 || off > len(doc) {
		return 0
	}
	return strings.Count(string(doc[:off]), "\n") + 1
}

// lineOf returns the line of path, or of its nearest enclosing key present in
// the file; 0 when none is (a required key that is absent).
func (idx *keyIndex) lineOf(path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if l, ok := idx.lines[p]; ok {
			return l
		}
	}
	return 0
}

func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i > 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexByte(p, '.'); i > 0 {
		return p[:i]
	}
	return ""
}

// pathAt names the key written at line, falling back to the decoder's key.
func (idx *keyIndex) pathAt(line int, fallback string) string {
	for _, e := range idx.exprs {
		if !e.isTableHeader && line >= e.line && line <= e.endLine {
			return e.path
		}
	}
	return fallback
}

// blankExpression replaces the key/value expression covering line with
// spaces (newlines kept, so every other position stays the same), letting the
// decoder go on to report the rest of the file's problems.
func blankExpression(doc []byte, idx *keyIndex, line int) []byte {
	for _, e := range idx.exprs {
		if e.isTableHeader || line < e.line || line > e.endLine {
			continue
		}
		for i := e.start; i < e.end && i < len(doc); i++ {
			if doc[i] != '\n' {
				doc[i] = ' '
			}
		}
		return doc
	}
	// A table header: blank the line itself.
	start := 0
	for l := 1; l < line && start < len(doc); start++ {
		if doc[start] == '\n' {
			l++
		}
	}
	for i := start; i < len(doc) && doc[i] != '\n'; i++ {
		doc[i] = ' '
	}
	return doc
}

// lineOfValue finds the first key/value whose value is written as raw and
// that is not yet blanked in doc: the decoder reports some value errors
// without a position.
func (idx *keyIndex) lineOfValue(doc []byte, raw string) int {
	for _, e := range idx.exprs {
		if e.isTableHeader || e.value != raw || e.start >= len(doc) || doc[e.start] == ' ' {
			continue
		}
		return e.line
	}
	return 0
}
