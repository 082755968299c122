package toolproxy

import "github.com/applianced/applianced/internal/conf"

// Tool is one [[tool]] of applianced.toml: an internal service agents reach
// through the credential-injection proxy.
type Tool struct {
	Name    string        `toml:"name"`
	BaseURL string        `toml:"base_url"`
	CAFile  string        `toml:"ca_file"`
	Timeout conf.Duration `toml:"timeout"`
	Auth    ToolAuth      `toml:"auth"`
	Routes  []Route       `toml:"route"`
}

// ToolAuth says how the proxy injects the credential.
type ToolAuth struct {
	Type   string `toml:"type"`   // bearer | basic | header | query | oauth2_client_credentials | tls_client
	Name   string `toml:"name"`   // header or query parameter name
	Secret string `toml:"secret"` // vault secret name
}

// Route is one [[tool.route]]: a method and path pattern and what it needs.
type Route struct {
	Method           string        `toml:"method"`
	Path             string        `toml:"path"`
	Scope            string        `toml:"scope"`
	Approval         string        `toml:"approval"`
	MaxResponseBytes conf.ByteSize `toml:"max_response_bytes"`
	DLP              string        `toml:"dlp"`
}

// RiskConfig is the [risk] section.
type RiskConfig struct {
	RequestsPerMinute    int           `toml:"requests_per_minute"`
	ResponseBytesPerHour conf.ByteSize `toml:"response_bytes_per_hour"`
	OnExceed             string        `toml:"on_exceed"`
}
