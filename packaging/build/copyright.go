package main

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"unicode"
)

// copyright renders the machine-readable debian/copyright, listing the Go
// modules linked into the binary with the license each one ships.
func copyright(exe string) ([]byte, error) {
	bi, err := buildinfo.ReadFile(exe)
	if err != nil {
		return nil, fmt.Errorf("reading the binary's module list: %w", err)
	}
	modcache := goEnv("GOMODCACHE")
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
	p("Upstream-Name: applianced")
	p("Source: https://applianced.example/")
	p("Comment: /usr/bin/applianced is a static Go binary. It links these Go")
	p(" modules (path, version, license found in the module):")
	p(" .")
	p("  %s %s BSD-3-Clause (Go standard library)", "go", bi.GoVersion)
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		p("  %s %s %s", d.Path, d.Version, detectLicense(modcache, d.Path, d.Version))
	}
	p("")
	p("Files: *")
	p("Copyright: 2026 the applianced authors")
	p("License: Apache-2.0")
	p(" Licensed under the Apache License, Version 2.0 (the \"License\"); you may")
	p(" not use this file except in compliance with the License.")
	p(" .")
	p(" On Debian systems, the complete text of the Apache License, Version 2.0")
	p(" can be found in \"/usr/share/common-licenses/Apache-2.0\".")
	return b.Bytes(), nil
}

func goEnv(key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// escapePath is the module cache's case encoding: "!" before each upper
// case letter, lowered.
func escapePath(p string) string {
	var b strings.Builder
	for _, r := range p {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// detectLicense names the license of a module from its LICENSE file's
// wording; "see the module" when it cannot tell.
func detectLicense(modcache, path, version string) string {
	if modcache == "" {
		return "see the module"
	}
	dir := filepath.Join(modcache, escapePath(path)+"@"+version)
	matches, _ := filepath.Glob(filepath.Join(dir, "LICEN[CS]E*"))
	more, _ := filepath.Glob(filepath.Join(dir, "COPYING*"))
	for _, f := range append(matches, more...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		t := strings.Join(strings.Fields(string(b)), " ")
		switch {
		case strings.Contains(t, "Apache License") && strings.Contains(t, "Version 2.0"):
			return "Apache-2.0"
		case strings.Contains(t, "Mozilla Public License"):
			return "MPL-2.0"
		case strings.Contains(t, "Permission is hereby granted, free of charge"):
			return "Expat"
		case strings.Contains(t, "Permission to use, copy, modify, and/or distribute"), strings.Contains(t, "ISC License"):
			return "ISC"
		case strings.Contains(t, "Redistribution and use in source and binary forms") && strings.Contains(t, "Neither the name"):
			return "BSD-3-Clause"
		case strings.Contains(t, "Redistribution and use in source and binary forms"):
			return "BSD-2-Clause"
		}
	}
	return "see the module"
}
