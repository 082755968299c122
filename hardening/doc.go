// Package hardening owns the process's own protection at start and the host
// posture checks behind `applianced doctor`.
//
// At start, Apply turns off core dumps (RLIMIT_CORE 0 and PR_SET_DUMPABLE 0,
// so neither a crash nor a ptrace-less reader of /proc can copy key material
// out of memory), sets the umask to 077, and locks memory against swapping
// when the process is permitted to (RLIMIT_MEMLOCK unlimited or
// CAP_IPC_LOCK). CheckKeyFile, CheckConfigFile and OpenKeyFile refuse files
// whose owner, type or mode would let another local user read or replace a
// secret or the configuration.
//
// Doctor checks are small functions returning Results (pass, warn, fail or
// skip, each with a one-line fix); Run executes them with a timeout each and
// never lets one crashing check hide the others. Host checks (sysctls, file
// modes, clock, listening sockets, unit exposure, egress probe, domain
// controller certificates) work standalone; checks about other components
// (syslog delivery, firewall drift) take a small interface the daemon
// provides.
//
// The package refuses to weaken anything: it never raises a limit, never
// makes a file more permissive and never changes a sysctl; it reports and
// says how to fix.
package hardening
