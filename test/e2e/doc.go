// Package e2e is the install test: it builds the .deb, boots Debian 12 with
// systemd as PID 1 in a container (systemd-nspawn, private network), and
// installs, reloads, upgrades, checks with doctor and purges the package the
// way a sysadmin would. Run it with `make e2e` (root; build tag e2e).
package e2e
