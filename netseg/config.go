package netseg

// Config is the [net] section of applianced.toml.
// (Fields are completed and documented by the netseg implementation.)
type Config struct {
	VLANs   []VLAN `toml:"vlan"`
	Egress  []Rule `toml:"egress"`
	Ingress []Rule `toml:"ingress"`
}

// VLAN is one [[net.vlan]].
type VLAN struct {
	Name      string   `toml:"name"`
	Parent    string   `toml:"parent"`
	ID        int      `toml:"id"`
	MTU       int      `toml:"mtu"`
	Addresses []string `toml:"addresses"`
}

// Rule is one [[net.egress]] or [[net.ingress]] allow rule.
type Rule struct {
	To      []string `toml:"to"`
	From    []string `toml:"from"`
	Proto   string   `toml:"proto"`
	Ports   []int    `toml:"ports"`
	Comment string   `toml:"comment"`
}
