// Package capacity computes how many TCP connections a set of source ports
// can carry: at most how many can be open at once to one destination and in
// total, and at most how many can be opened per second once TIME_WAIT is
// taken into account.
//
// The model: a TCP connection is named by its 4-tuple (source address,
// source port, destination address, destination port; RFC 6056 §2.1), no two
// connections may share one, and RFC 9293 §3.6 keeps a 4-tuple in TIME-WAIT
// for 2×MSL after the side that closes first (the active closer, assumed here
// to be the client) has closed it; Linux holds it for TCP_TIMEWAIT_LEN, 60 s. So to one destination, each
// source address can hold at most |ports| connections at once and open at
// most |ports| / (hold + TIME_WAIT) per second, where hold is how long a
// connection stays open. With FourTuple sharing (the kernel picks the port in
// connect(), as Linux does when the socket is not bound to a port), a port
// serves every destination at once, so totals scale with the number of
// destinations; with Exclusive sharing (bind() before connect()), a port
// serves one connection at a time whatever its destination, so they do not.
//
// Port sets are written as tuple.ParsePortSet does ("1024-2047,4000-4095")
// or as platform profile names ("linux", "windows"), see ParsePorts.
package capacity
