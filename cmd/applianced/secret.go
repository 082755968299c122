package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/vault"
)

// Admin paths of the secret area.
const (
	adminSecretPut    = "/admin/v1/secret/put"
	adminSecretRotate = "/admin/v1/secret/rotate"
	adminSecretList   = "/admin/v1/secret/list"
	adminSecretDelete = "/admin/v1/secret/delete"
	adminSecretVerify = "/admin/v1/secret/verify"
)

// secretPutRequest is the body of secret/put and secret/rotate (Type and
// AllowedTools are ignored by rotate). Value is base64 in JSON.
type secretPutRequest struct {
	Name         string     `json:"name"`
	Type         vault.Type `json:"type,omitempty"`
	Value        []byte     `json:"value"`
	AllowedTools []string   `json:"allowed_tools,omitempty"`
}

// secretPutReply is what a put answers: the stored secret's metadata, and
// what the admin should know about it.
type secretPutReply struct {
	vault.Meta
	Warnings []string `json:"warnings,omitempty"`
}

type secretNameRequest struct {
	Name string `json:"name"`
}

type secretVerifyRequest struct {
	Name      string `json:"name"`
	Candidate []byte `json:"candidate"`
}

type secretVerifyReply struct {
	Match bool `json:"match"`
}

type secretListReply struct {
	Secrets []vault.Meta `json:"secrets"`
}

// mountSecrets puts the secret verbs on the admin mux. tools lists the
// configured [[tool]] names, which --allow-tool must name.
func mountSecrets(mux *http.ServeMux, v *vault.Vault, tools func() []string) {
	mux.HandleFunc("POST "+adminSecretPut, func(w http.ResponseWriter, r *http.Request) {
		var req secretPutRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		defer clear(req.Value)
		// A secret may be stored before its [[tool]] is configured, but a
		// name no tool has is most likely a typo: the put says so.
		var warnings []string
		known := tools()
		for _, t := range req.AllowedTools {
			if !slices.Contains(known, t) {
				warnings = append(warnings, fmt.Sprintf("--allow-tool %s: no [[tool]] of that name in the running config (tools: %s); no tool can use the secret under that name until one is configured",
					t, orNone(known)))
			}
		}
		m, err := v.Put(r.Context(), actorOf(r), vault.PutRequest{Name: req.Name, Type: req.Type, Value: req.Value, AllowedTools: req.AllowedTools})
		answerVault(w, secretPutReply{Meta: m, Warnings: warnings}, err)
	})
	mux.HandleFunc("POST "+adminSecretRotate, func(w http.ResponseWriter, r *http.Request) {
		var req secretPutRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		defer clear(req.Value)
		m, err := v.Rotate(r.Context(), actorOf(r), req.Name, req.Value)
		answerVault(w, m, err)
	})
	mux.HandleFunc("GET "+adminSecretList, func(w http.ResponseWriter, r *http.Request) {
		list, err := v.List(r.Context(), actorOf(r))
		answerVault(w, secretListReply{Secrets: list}, err)
	})
	mux.HandleFunc("POST "+adminSecretDelete, func(w http.ResponseWriter, r *http.Request) {
		var req secretNameRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		answerVault(w, struct{}{}, v.Delete(r.Context(), actorOf(r), req.Name))
	})
	mux.HandleFunc("POST "+adminSecretVerify, func(w http.ResponseWriter, r *http.Request) {
		var req secretVerifyRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		defer clear(req.Candidate)
		ok, err := v.Verify(r.Context(), actorOf(r), req.Name, req.Candidate)
		answerVault(w, secretVerifyReply{Match: ok}, err)
	})
}

// actorOf is the admin caller as an audit actor.
func actorOf(r *http.Request) audit.Actor {
	if c, ok := admin.CallerFrom(r.Context()); ok {
		return c.Actor()
	}
	return audit.Actor{}
}

// answerVault answers res, or err as writeVaultError does.
func answerVault(w http.ResponseWriter, res any, err error) {
	if err != nil {
		writeVaultError(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, res)
}

// writeVaultError answers a vault error with the matching status. Vault
// errors never carry a value.
func writeVaultError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, vault.ErrInvalid), errors.Is(err, vault.ErrSealed):
		admin.WriteError(w, http.StatusBadRequest, "invalid_request", err.Error())
	case errors.Is(err, vault.ErrNotFound):
		admin.WriteError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, vault.ErrAudit), errors.Is(err, vault.ErrClosed):
		admin.WriteError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	default:
		admin.WriteError(w, http.StatusInternalServerError, "server_error", err.Error())
	}
}

// parseInterleaved parses flags written before or after the positional
// arguments ("secret put NAME --type api_key") and returns the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, int, bool) {
	var pos []string
	for {
		if code, ok := parse(fs, args); !ok {
			return nil, code, false
		}
		if fs.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// wantPositional checks the count of positional arguments.
func (e *env) wantPositional(fs *flag.FlagSet, pos []string, n int) bool {
	if len(pos) != n {
		fmt.Fprintf(e.stderr, "applianced %s: want %d argument(s), got %d\n", fs.Name(), n, len(pos))
		fs.Usage()
		return false
	}
	return true
}

// parsePositional is parseInterleaved followed by wantPositional: it
// returns the n positionals, or the exit code to use and false.
func (e *env) parsePositional(fs *flag.FlagSet, args []string, n int) ([]string, int, bool) {
	pos, code, ok := parseInterleaved(fs, args)
	if !ok {
		return nil, code, false
	}
	if !e.wantPositional(fs, pos, n) {
		return nil, exitUsage, false
	}
	return pos, 0, true
}

// readSecret reads a value: without echo from a terminal (one line), or all
// of stdin. Unless raw, one trailing newline is removed. It never comes
// from the command line, so it is not in the shell history or ps.
func readSecret(e *env, prompt string, raw bool) ([]byte, error) {
	if f, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(e.stderr, prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return nil, fmt.Errorf("reading the value: %w", err)
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(e.stdin, vault.MaxValueSize+3))
	if err != nil {
		clear(b)
		return nil, fmt.Errorf("reading the value from stdin: %w", err)
	}
	if !raw {
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
	}
	return b, nil
}

// toolList collects repeated --allow-tool flags (commas also separate).
type toolList []string

func (t *toolList) String() string { return strings.Join(*t, ",") }
func (t *toolList) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*t = append(*t, p)
		}
	}
	return nil
}

func cmdSecretPut(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("secret put", "NAME --type TYPE [--allow-tool TOOL]...",
		"Store a secret, or a new version of it, in the vault. The value is read from\n"+
			"stdin (a terminal gets a prompt without echo), never from the command line.\n"+
			"Types: password, api_key, opaque (the raw value); basic, oauth2_client and\n"+
			"tls_client (a JSON object, e.g. {\"user\":\"svc\",\"password\":\"...\"}).\n"+
			"--allow-tool names the [[tool]] entries that may use it; a put sets the list.",
		"applianced secret put tickets-key --type api_key --allow-tool tickets",
		"applianced secret put ldap-bind --type password < bind-password.txt",
		`applianced secret put wiki --type basic --allow-tool wiki < wiki.json`)
	typ := fs.String("type", "", "secret `TYPE`: password, api_key, basic, oauth2_client, tls_client or opaque")
	var tools toolList
	fs.Var(&tools, "allow-tool", "a [[tool]] `NAME` that may use the secret (repeat, or comma-separated)")
	raw := fs.Bool("raw", false, "keep the value byte for byte (do not remove a trailing newline)")
	pos, code, ok := e.parsePositional(fs, args, 1)
	if !ok {
		return code
	}
	if err := vault.CheckName(pos[0]); err != nil {
		return e.fail("secret put", err)
	}
	if *typ == "" {
		fmt.Fprintln(e.stderr, "applianced secret put: --type is required: password, api_key, basic, oauth2_client, tls_client or opaque")
		return exitUsage
	}
	t, err := vault.ParseType(*typ)
	if err != nil {
		fmt.Fprintf(e.stderr, "applianced secret put: --type: %v\n", err)
		return exitUsage
	}
	value, err := readSecret(e, fmt.Sprintf("Value for %s (%s): ", pos[0], t), *raw)
	if err != nil {
		return e.fail("secret put", err)
	}
	defer clear(value)
	var m secretPutReply
	err = e.call(ctx, *cfgPath, http.MethodPost, adminSecretPut,
		secretPutRequest{Name: pos[0], Type: t, Value: value, AllowedTools: tools}, &m)
	if err != nil {
		return e.fail("secret put", err)
	}
	fmt.Fprintf(e.stdout, "%s: version %d stored (%s; tools: %s)\n", m.Name, m.Version, m.Type, orNone(m.AllowedTools))
	for _, w := range m.Warnings {
		fmt.Fprintf(e.stderr, "applianced secret put: warning: %s\n", w)
	}
	return exitOK
}

func cmdSecretRotate(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("secret rotate", "NAME",
		"Store a new version of an existing secret, keeping its type and allowed tools.\n"+
			"The value is read from stdin (a terminal gets a prompt without echo).",
		"applianced secret rotate tickets-key", "applianced secret rotate wiki < wiki.json")
	raw := fs.Bool("raw", false, "keep the value byte for byte (do not remove a trailing newline)")
	pos, code, ok := e.parsePositional(fs, args, 1)
	if !ok {
		return code
	}
	value, err := readSecret(e, fmt.Sprintf("New value for %s: ", pos[0]), *raw)
	if err != nil {
		return e.fail("secret rotate", err)
	}
	defer clear(value)
	var m vault.Meta
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminSecretRotate, secretPutRequest{Name: pos[0], Value: value}, &m); err != nil {
		return e.fail("secret rotate", err)
	}
	fmt.Fprintf(e.stdout, "%s: version %d stored\n", m.Name, m.Version)
	return exitOK
}

func cmdSecretList(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("secret list", "",
		"List the secrets in the vault: names, types, versions, times and allowed tools.\n"+
			"Values are never shown; no command prints one.",
		"applianced secret list", "applianced secret list --json")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, code, ok := e.parsePositional(fs, args, 0); !ok {
		return code
	}
	var out secretListReply
	code := e.show(ctx, *cfgPath, "secret list", http.MethodGet, adminSecretList, nil, &out, *asJSON, func() {
		if len(out.Secrets) == 0 {
			fmt.Fprintln(e.stdout, "no secrets")
			return
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tTYPE\tVERSION\tKEPT\tROTATED\tTOOLS\tSTATE")
		for _, m := range out.Secrets {
			if m.Refused != "" {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\trefused: %s\n", m.Name, m.Refused)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\tok\n", m.Name, m.Type, m.Version, len(m.Versions),
				m.Rotated.Local().Format(time.DateTime), orNone(m.AllowedTools))
		}
		tw.Flush()
	})
	var refused []string
	for _, m := range out.Secrets {
		if m.Refused != "" {
			refused = append(refused, m.Name)
		}
	}
	if code != exitOK || len(refused) == 0 {
		return code
	}
	fmt.Fprintf(e.stderr, "applianced secret list: %d secret(s) refused, nothing of them is used: %s; restore a backup, "+
		"or delete each (`applianced secret delete NAME`) and put it again\n", len(refused), strings.Join(refused, ", "))
	return exitFailure
}

func cmdSecretDelete(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("secret delete", "NAME", "Delete a secret and every version of it.",
		"applianced secret delete old-key")
	pos, code, ok := e.parsePositional(fs, args, 1)
	if !ok {
		return code
	}
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminSecretDelete, secretNameRequest{Name: pos[0]}, nil); err != nil {
		return e.fail("secret delete", err)
	}
	fmt.Fprintf(e.stdout, "%s: deleted\n", pos[0])
	return exitOK
}

func cmdSecretVerify(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("secret verify", "NAME",
		"Compare a candidate value (read from stdin, or a prompt without echo) with the\n"+
			"secret's current value, in constant time. Prints match (exit 0) or no match\n"+
			"(exit 1).",
		"applianced secret verify ldap-bind")
	raw := fs.Bool("raw", false, "keep the candidate byte for byte (do not remove a trailing newline)")
	pos, code, ok := e.parsePositional(fs, args, 1)
	if !ok {
		return code
	}
	cand, err := readSecret(e, fmt.Sprintf("Candidate for %s: ", pos[0]), *raw)
	if err != nil {
		return e.fail("secret verify", err)
	}
	defer clear(cand)
	var out secretVerifyReply
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminSecretVerify, secretVerifyRequest{Name: pos[0], Candidate: cand}, &out); err != nil {
		return e.fail("secret verify", err)
	}
	if !out.Match {
		fmt.Fprintln(e.stdout, "no match")
		return exitFailure
	}
	fmt.Fprintln(e.stdout, "match")
	return exitOK
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}
