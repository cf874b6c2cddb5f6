// Package stun implements the STUN message format of RFC 8489 with the
// behaviour-discovery attributes of RFC 5780 and the classic attributes of
// RFC 3489, and a behaviour-discovery server (RFC 5780 section 6) that also
// answers RFC 3489 clients, over UDP and TCP.
//
// The codec works in place: Parse fills a Message whose attributes are views
// into the caller's buffer, and a Builder appends a message to a buffer the
// caller owns, so that the server's request path allocates nothing.
package stun
