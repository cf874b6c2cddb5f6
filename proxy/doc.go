// Package proxy is portspace's egress proxy: SOCKS5 (RFC 1928, with the
// RFC 1929 username/password method) and HTTP proxying (RFC 9110 CONNECT
// and absolute-form forwarding) on one listener, told apart by the first
// byte of the connection (0x05 is SOCKS5, anything else HTTP).
//
// Every outgoing connection goes through an Egress, which picks a source
// address whose traits (for example geo=de) the request needs and dials
// from it; LeaseEgress claims port slices of shared addresses from a
// lease.Store and dials from them with dial.Dialer, so that one source
// port serves many destinations and several hosts share one address.
//
// A request's traits come, in this order (later ones add to earlier ones and
// never replace them), from the client's address (Config.Clients), the
// client address's country in a GeoIP database (trait geo), the user's
// configured traits, and the username itself. The username syntax is
//
//	NAME[,KEY=VALUE]...
//
// for example "alice,geo=de" or "alice,geo=de,session=s1". The key session
// names a sticky session: connections of one user with the same session
// keep the same egress address while the session has a connection or was
// used within Config.SessionIdle. Other keys request traits; a requested
// trait that contradicts a configured one is refused (SOCKS X'02', HTTP 403).
//
// Destinations pass a guard first (see Guard): loopback, private (RFC 1918,
// RFC 4193), link-local, shared CGN space (RFC 6598), multicast,
// unspecified and the proxy's own addresses are refused unless
// Config.Destinations.Allow lists them. The guard checks the addresses a
// name resolves to, and the proxy dials exactly those addresses, so a name
// cannot rebind past it.
//
// An idle tunnel holds its two sockets and nothing else: each direction
// waits for readability through syscall.RawConn before it takes a pooled
// buffer, so no buffer, pipe or descriptor is held while nothing moves.
package proxy
