package main

import (
	"reflect"
	"testing"

	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/ldapauth"
	"github.com/applianced/applianced/netseg"
	"github.com/applianced/applianced/syslog"
)

func TestNetNeedsComeFromTheConfig(t *testing.T) {
	f := &config.File{
		LDAP:  &ldapauth.Config{URLs: []string{"ldaps://dc1.corp.example", "ldap://10.10.0.12:3389"}},
		Tools: []toolproxy.Tool{{BaseURL: "https://tickets.corp.example/api"}, {BaseURL: "http://10.0.0.9:8080/"}},
	}
	f.Audit.Syslog = []syslog.Target{{Address: "tls://siem.corp.example:6514"}, {Address: "udp://10.40.0.2"}, {Address: "unix:///dev/log"}}
	want := []netseg.Need{
		{Address: "dc1.corp.example:636", Proto: "tcp", Origin: "ldap.urls[0]"},
		{Address: "10.10.0.12:3389", Proto: "tcp", Origin: "ldap.urls[1]"},
		{Address: "siem.corp.example:6514", Proto: "tcp", Origin: "audit.syslog[0].address"},
		{Address: "10.40.0.2:514", Proto: "udp", Origin: "audit.syslog[1].address"},
		{Address: "tickets.corp.example:443", Proto: "tcp", Origin: "tool[0].base_url"},
		{Address: "10.0.0.9:8080", Proto: "tcp", Origin: "tool[1].base_url"},
	}
	if got := netNeeds(f); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}
