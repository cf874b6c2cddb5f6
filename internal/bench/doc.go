// Package bench is the harness behind "portspace bench dial": it starts
// loopback listeners (TCP listeners that accept and hold, UDP echo sockets),
// opens connections through a Dialer under test and through a plain
// net.Dialer baseline, holds them, checks them with an independent sock_diag
// census, and renders the figures as a table or JSON.
//
// A connection is identified by its 4-tuple (RFC 9293 §3.1), so one source
// port may serve many destinations at once; the census counts ESTABLISHED
// sockets per 4-tuple through NETLINK_SOCK_DIAG, independently of the dialer,
// and reports any 4-tuple held by more than one socket.
//
// One process may hold a limited number of open files (RLIMIT_NOFILE), and
// an in-process TCP run holds two per connection (the dialed and the accepted
// socket), so in-process runs are capped and say so; RunWorkers spreads a
// large run (one million connections) over listener and dialer processes.
package bench
