package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"time"
)

// cliHelp is what the binary says about itself.
type cliHelp struct {
	Summary  string // "credentials broker, audit trail and ..."
	Commands []command
}

type command struct {
	Name    string   // "config check"
	Summary string   // one line from the command list
	Usage   string   // the full `applianced NAME -h` text
	Flags   []string // "config", "json"
}

var (
	commandLineRE = regexp.MustCompile(`^  (\S+(?: \S+)*?)\s{2,}(\S.*)$`)
	flagLineRE    = regexp.MustCompile(`^  -([A-Za-z][A-Za-z0-9-]*)`)
)

// readHelp runs `applianced --help` and `applianced COMMAND -h` for each
// command listed.
func readHelp(exe string) (*cliHelp, error) {
	top, err := helpText(exe, "--help")
	if err != nil {
		return nil, err
	}
	h, err := parseTopHelp(top)
	if err != nil {
		return nil, err
	}
	for i := range h.Commands {
		c := &h.Commands[i]
		usage, err := helpText(exe, append(strings.Fields(c.Name), "-h")...)
		if err != nil {
			return nil, err
		}
		c.Usage = strings.TrimRight(usage, "\n")
		for _, line := range strings.Split(usage, "\n") {
			if m := flagLineRE.FindStringSubmatch(line); m != nil {
				c.Flags = append(c.Flags, m[1])
			}
		}
	}
	return h, nil
}

// helpText runs the binary and returns what it printed (help goes to
// stderr); help exits 0.
func helpText(exe string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("applianced %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

func parseTopHelp(text string) (*cliHelp, error) {
	lines := strings.Split(text, "\n")
	h := &cliHelp{}
	if len(lines) > 0 {
		h.Summary = strings.TrimSpace(strings.TrimPrefix(lines[0], "applianced:"))
	}
	in := false
	for _, line := range lines {
		switch {
		case strings.TrimSpace(line) == "Commands:":
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in:
			if m := commandLineRE.FindStringSubmatch(line); m != nil {
				h.Commands = append(h.Commands, command{Name: m[1], Summary: m[2]})
			}
		}
	}
	if h.Summary == "" || len(h.Commands) == 0 {
		return nil, fmt.Errorf("unexpected `applianced --help` output:\n%s", text)
	}
	sort.Slice(h.Commands, func(a, b int) bool { return h.Commands[a].Name < h.Commands[b].Name })
	return h, nil
}

// roff escapes text for a man page line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// manPage renders applianced(8) from the help.
func manPage(h *cliHelp, version string, date time.Time) []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p(`.TH APPLIANCED 8 "%s" "applianced %s" "System Administration"`, date.Format(time.DateOnly), roff(version))
	p(".SH NAME")
	p(`applianced \- %s`, roff(h.Summary))
	p(".SH SYNOPSIS")
	p(".B applianced")
	p(".I COMMAND")
	p(".RI [ flags ]")
	p(".SH DESCRIPTION")
	p("One binary is both the daemon, run by systemd as")
	p(".BR \"applianced serve\" ,")
	p("and the administrator's command line. Admin commands talk to the running daemon over")
	p(".IR /run/applianced/admin.sock ,")
	p("which admits root and members of the")
	p(".B applianced\\-admin")
	p("group. Every command takes")
	p(".B \\-h")
	p("for its usage and examples, and listing commands take")
	p(".BR \\-\\-json .")
	p(".SH COMMANDS")
	for _, c := range h.Commands {
		p(".TP")
		p(".B %s", roff(c.Name))
		p("%s", roff(c.Summary))
		if c.Usage != "" {
			p(".RS")
			p(".PP")
			p(".nf")
			for _, line := range strings.Split(c.Usage, "\n") {
				p("%s", roff(strings.ReplaceAll(line, "\t", "    ")))
			}
			p(".fi")
			p(".RE")
		}
	}
	p(".SH FILES")
	for _, f := range [][2]string{
		{"/etc/applianced/applianced.toml", "the configuration (root:applianced, 0640); see the comments in it"},
		{"/etc/applianced/master.key", "the vault's master key (0400), unless it is an encrypted systemd credential"},
		{"/var/lib/applianced", "the vault database and the audit journal (0700)"},
		{"/run/applianced/admin.sock", "the admin socket"},
		{"/run/applianced/agent.sock", "the socket local agents ask for tokens on"},
		{"/lib/systemd/system/applianced.service", "the hardened unit; local changes go in a drop\\-in (systemctl edit applianced)"},
	} {
		p(".TP")
		p(".I %s", f[0])
		p("%s", f[1])
	}
	p(".SH EXIT STATUS")
	p("0 on success, 1 on failure, 2 on a usage error.")
	p(".SH SEE ALSO")
	p(".BR systemctl (1),")
	p(".BR systemd\\-analyze (1),")
	p(".BR systemd\\-creds (1),")
	p(".BR nft (8)")
	return b.Bytes()
}

// completion renders a bash completion script: command words level by
// level, each command's flags after a dash, file names for --config.
func completion(h *cliHelp) []byte {
	next := map[string]map[string]bool{} // "" -> first words; "audit" -> second words
	flags := map[string][]string{}
	for _, c := range h.Commands {
		words := strings.Fields(c.Name)
		for i := range words {
			prefix := strings.Join(words[:i], " ")
			if next[prefix] == nil {
				next[prefix] = map[string]bool{}
			}
			next[prefix][words[i]] = true
		}
		for _, f := range c.Flags {
			dash := "--"
			if len(f) == 1 {
				dash = "-" // -f, -n: the short form reads better
			}
			flags[c.Name] = append(flags[c.Name], dash+f)
		}
	}
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# bash completion for applianced(8); generated from `applianced --help`.")
	p("_applianced() {")
	p("    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}")
	p("    local i w cmd=")
	p("    for ((i = 1; i < COMP_CWORD; i++)); do")
	p("        w=${COMP_WORDS[i]}")
	p(`        [[ $w == -* ]] && continue`)
	p(`        cmd=${cmd:+$cmd }$w`)
	p("    done")
	p(`    if [[ $prev == --config || $prev == -config ]]; then`)
	p(`        COMPREPLY=($(compgen -f -- "$cur"))`)
	p("        return")
	p("    fi")
	p("    local words=")
	p(`    case "$cur" in`)
	p("    -*)")
	p(`        case "$cmd" in`)
	for _, name := range sortedKeys(flags) {
		p(`        %q) words=%q ;;`, name, strings.Join(flags[name], " "))
	}
	p("        esac")
	p("        ;;")
	p("    *)")
	p(`        case "$cmd" in`)
	for _, prefix := range sortedKeys(next) {
		p(`        %q) words=%q ;;`, prefix, strings.Join(sortedKeys(next[prefix]), " "))
	}
	p(`        *) COMPREPLY=($(compgen -f -- "$cur")); return ;;`)
	p("        esac")
	p("        ;;")
	p("    esac")
	p(`    COMPREPLY=($(compgen -W "$words" -- "$cur"))`)
	p("}")
	p("complete -F _applianced applianced")
	return b.Bytes()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
