package nat_test

// NAT conformance suite, RFC 5508 (ICMP) requirements I1..I8.

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portspace/portspace/nat"
	"github.com/portspace/portspace/tuple"
)

// echoOut sends an echo request with identifier id from internal host h to
// dst, requires it to be forwarded from an external address with only the
// source address and identifier changed, and returns the external address
// and identifier.
func (r *rig) echoOut(h netip.Addr, id uint16, dst netip.Addr, seq uint16) netip.AddrPort {
	r.t.Helper()
	res := r.run(true, icmpEchoPkt(h, dst, icmpEcho, id, seq))
	if res.v.Action != nat.Forward {
		r.t.Fatalf("echo %v id %d -> %v: %v (%s)", h, id, dst, res.v.Action, res.v.Reason)
	}
	ext := res.pv.From()
	if want := icmpEchoPkt(ext.Addr(), dst, icmpEcho, ext.Port(), seq); string(res.out) != string(want) {
		r.t.Fatalf("translated echo\n got  % x\n want % x", res.out, want)
	}
	if !r.isExternal(ext.Addr()) || res.pv.Dst != dst {
		r.t.Fatalf("echo translated to %v -> %v", ext, res.pv.Dst)
	}
	return ext
}

// echoReplyIn sends an echo reply from src to ext and reports whether it
// was delivered to host h with identifier id (checked byte for byte).
func (r *rig) echoReplyIn(src netip.Addr, ext netip.AddrPort, h netip.Addr, id, seq uint16) bool {
	r.t.Helper()
	res := r.run(false, icmpEchoPkt(src, ext.Addr(), icmpEchoReply, ext.Port(), seq))
	if res.v.Action != nat.Forward {
		return false
	}
	if want := icmpEchoPkt(src, h, icmpEchoReply, id, seq); string(res.out) != string(want) {
		r.t.Fatalf("translated echo reply\n got  % x\n want % x", res.out, want)
	}
	return true
}

// RFC 5508 REQ-1 and REQ-1a: outbound ICMP queries and their replies pass;
// the query identifier mapping does not depend on the external host.
func TestConformance_I1_ICMPQueries(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.echoOut(hostX.Addr(), 0x1234, srvA.Addr(), 1)
	if !r.echoReplyIn(srvA.Addr(), ext, hostX.Addr(), 0x1234, 1) {
		t.Fatal("echo reply not delivered")
	}
	// 1a: the same identifier towards another host keeps its mapping.
	if ext2 := r.echoOut(hostX.Addr(), 0x1234, srvB.Addr(), 1); ext2 != ext {
		t.Fatalf("identifier 0x1234 mapped to %v towards %v and %v towards %v", ext, srvA.Addr(), ext2, srvB.Addr())
	}
	if !r.echoReplyIn(srvB.Addr(), ext, hostX.Addr(), 0x1234, 1) {
		t.Fatal("echo reply from the second host not delivered")
	}
	// Another host using the same identifier gets another external one.
	if ext3 := r.echoOut(hostY.Addr(), 0x1234, srvA.Addr(), 1); ext3 == ext {
		t.Fatalf("two hosts share ICMP identifier mapping %v", ext)
	}
	// The other query types (timestamp, address mask) pass the same way.
	for _, q := range []struct {
		req, rep uint8
		body     int
	}{{13, 14, 12}, {17, 18, 4}} {
		body := make([]byte, q.body)
		res := r.run(true, icmpQueryPkt(hostX.Addr(), srvA.Addr(), q.req, 0x0777, 1, body))
		if res.v.Action != nat.Forward {
			t.Fatalf("ICMP query type %d: %v (%s)", q.req, res.v.Action, res.v.Reason)
		}
		qe := res.pv.From()
		if want := icmpQueryPkt(qe.Addr(), srvA.Addr(), q.req, qe.Port(), 1, body); string(res.out) != string(want) {
			t.Fatalf("type %d translated\n got  % x\n want % x", q.req, res.out, want)
		}
		res = r.run(false, icmpQueryPkt(srvA.Addr(), qe.Addr(), q.rep, qe.Port(), 1, body))
		if want := icmpQueryPkt(srvA.Addr(), hostX.Addr(), q.rep, 0x0777, 1, body); res.v.Action != nat.Forward || string(res.out) != string(want) {
			t.Fatalf("type %d reply: %v (%s)\n got  % x\n want % x", q.rep, res.v.Action, res.v.Reason, res.out, want)
		}
	}
	// An unsolicited inbound echo request is not delivered.
	if res := r.run(false, icmpEchoPkt(srvA.Addr(), ext.Addr(), icmpEcho, ext.Port(), 9)); res.v.Action == nat.Forward {
		t.Fatalf("unsolicited echo request delivered to %v", res.pv.To())
	}
}

// RFC 5508 REQ-2: the ICMP query session timer is at least 60 s.
func TestConformance_I2_ICMPQueryTimer60s(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.echoOut(hostX.Addr(), 7, srvA.Addr(), 1)
	r.at(60*time.Second - time.Millisecond)
	if !r.echoReplyIn(srvA.Addr(), ext, hostX.Addr(), 7, 1) {
		t.Fatal("echo reply 59.999 s after the request not delivered")
	}
}

// RFC 5508 REQ-3: an ICMP error whose checksum fails is dropped silently,
// in both directions.
func TestConformance_I3_ICMPErrorChecksumValidated(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.out(ping, hostX, srvA)
	in := icmpErrPkt(srvA.Addr(), ext.Addr(), icmpUnreachable, codePortUnreach, udpPkt(ext, srvA, "ping"), 33, 0)
	in[len(in)-1] ^= 0x55 // payload byte: only the ICMP checksum catches it
	if res := r.run(false, in); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonICMPChecksum {
		t.Fatalf("inbound error with a bad checksum: %v (%s), want silent drop (%s)", res.v.Action, res.v.Reason, nat.ReasonICMPChecksum)
	}
	// Outbound: X answers a packet from srvA with a corrupted error.
	r.inTo(pong, srvA, ext, hostX)
	outErr := icmpErrPkt(hostX.Addr(), srvA.Addr(), icmpUnreachable, codePortUnreach, udpPkt(srvA, hostX, "pong"), 33, 0)
	outErr[len(outErr)-1] ^= 0x55
	if res := r.run(true, outErr); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonICMPChecksum {
		t.Fatalf("outbound error with a bad checksum: %v (%s), want silent drop (%s)", res.v.Action, res.v.Reason, nat.ReasonICMPChecksum)
	}
}

// RFC 5508 REQ-4 (and REQ-5 for the private realm): an ICMP error about a
// flow without an active mapping is dropped silently.
func TestConformance_I4_ICMPErrorWithoutMappingDropped(t *testing.T) {
	r := newRig(t, nat.Config{UDPTimeout: 2 * time.Minute})
	ext := r.out(ping, hostX, srvA)
	other := netip.AddrPortFrom(ext.Addr(), ext.Port()+1)
	for name, b := range map[string][]byte{
		"unmapped port": icmpErrPkt(srvA.Addr(), ext.Addr(), icmpUnreachable, codePortUnreach, udpPkt(other, srvA, "x"), 28, 0),
		"unmapped TCP":  icmpErrPkt(srvA.Addr(), ext.Addr(), icmpUnreachable, codePortUnreach, tcpPkt(ext, srvA, tcpSYN, 1, 0), 28, 0),
	} {
		if res := r.run(false, b); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonICMPNoSession {
			t.Errorf("%s: %v (%s), want silent drop (%s)", name, res.v.Action, res.v.Reason, nat.ReasonICMPNoSession)
		}
	}
	// Outbound, about a flow the NAT never delivered.
	b := icmpErrPkt(hostX.Addr(), srvB.Addr(), icmpUnreachable, codePortUnreach, udpPkt(srvB, hostX2, "x"), 28, 0)
	if res := r.run(true, b); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonICMPNoSession {
		t.Errorf("outbound error without mapping: %v (%s)", res.v.Action, res.v.Reason)
	}
	// After the mapping expires, errors about it are dropped too.
	r.at(2*time.Minute + 2*time.Second)
	b = icmpErrPkt(srvA.Addr(), ext.Addr(), icmpUnreachable, codePortUnreach, udpPkt(ext, srvA, "ping"), 28, 0)
	if res := r.run(false, b); res.v.Action != nat.Drop || res.v.Reason != nat.ReasonICMPNoSession {
		t.Errorf("error about an expired mapping: %v (%s)", res.v.Action, res.v.Reason)
	}
}

// RFC 5508 REQ-4 and REQ-5 (the translation): the embedded header is
// rewritten, type and code are kept and the outer address is fixed, in
// both directions and for each error type (checked byte for byte).
func TestConformance_I5_ICMPErrorTranslation(t *testing.T) {
	types := []struct{ typ, code uint8 }{
		{icmpUnreachable, 0}, {icmpUnreachable, codeHostUnreach}, {icmpUnreachable, codePortUnreach},
		{icmpUnreachable, codeAdminProhib}, {icmpTimeExc, 0}, {icmpTimeExc, 1}, {12, 0},
	}
	r := newRig(t, nat.Config{})
	ext := r.out(ping, hostX, srvA)
	for _, ty := range types {
		// Inbound: an error about X's outbound packet.
		res := r.run(false, icmpErrPkt(srvA.Addr(), ext.Addr(), ty.typ, ty.code, udpPkt(ext, srvA, "ping"), 33, 0))
		want := icmpErrPkt(srvA.Addr(), hostX.Addr(), ty.typ, ty.code, udpPkt(hostX, srvA, "ping"), 33, 0)
		if res.v.Action != nat.Forward || string(res.out) != string(want) {
			t.Errorf("inbound %d/%d: %v (%s)\n got  % x\n want % x", ty.typ, ty.code, res.v.Action, res.v.Reason, res.out, want)
		}
		// Outbound: X's error about srvA's inbound packet.
		res = r.run(true, icmpErrPkt(hostX.Addr(), srvA.Addr(), ty.typ, ty.code, udpPkt(srvA, hostX, "pong"), 33, 0))
		want = icmpErrPkt(ext.Addr(), srvA.Addr(), ty.typ, ty.code, udpPkt(srvA, ext, "pong"), 33, 0)
		if res.v.Action != nat.Forward || string(res.out) != string(want) {
			t.Errorf("outbound %d/%d: %v (%s)\n got  % x\n want % x", ty.typ, ty.code, res.v.Action, res.v.Reason, res.out, want)
		}
	}
	// An error about an ICMP query: the embedded identifier is translated.
	eext := r.echoOut(hostX.Addr(), 0x4242, srvB.Addr(), 3)
	res := r.run(false, icmpErrPkt(routerR, eext.Addr(), icmpTimeExc, 0, icmpEchoPkt(eext.Addr(), srvB.Addr(), icmpEcho, eext.Port(), 3), 32, 0))
	want := icmpErrPkt(routerR, hostX.Addr(), icmpTimeExc, 0, icmpEchoPkt(hostX.Addr(), srvB.Addr(), icmpEcho, 0x4242, 3), 32, 0)
	if res.v.Action != nat.Forward || string(res.out) != string(want) {
		t.Errorf("error about an echo: %v (%s)\n got  % x\n want % x", res.v.Action, res.v.Reason, res.out, want)
	}
}

// RFC 5508 REQ-6: an ICMP error about a query neither refreshes nor
// deletes the query session.
func TestConformance_I6_ErrorsAboutQueriesDoNotTouchSession(t *testing.T) {
	r := newRig(t, nat.Config{})
	ext := r.echoOut(hostX.Addr(), 99, srvA.Addr(), 1)
	r.at(50 * time.Second)
	errPkt := icmpErrPkt(routerR, ext.Addr(), icmpUnreachable, codeHostUnreach, icmpEchoPkt(ext.Addr(), srvA.Addr(), icmpEcho, ext.Port(), 1), 32, 0)
	if res := r.run(false, errPkt); res.v.Action != nat.Forward {
		t.Fatalf("error about the echo: %v (%s)", res.v.Action, res.v.Reason)
	}
	r.at(51 * time.Second)
	if !r.echoReplyIn(srvA.Addr(), ext, hostX.Addr(), 99, 1) {
		t.Fatal("the error deleted the query session")
	}
	r.at(62 * time.Second) // 62 s after the request, 12 s after the error
	if r.echoReplyIn(srvA.Addr(), ext, hostX.Addr(), 99, 1) {
		t.Fatal("the error (or the reply) refreshed the query session past its 60 s timer")
	}
}

// RFC 5508 REQ-7: hairpinned ICMP errors: Y answers a packet that X
// hairpinned to it with an error; X gets the error from Y's external
// address, about X's packet to Y's external endpoint.
func TestConformance_I7_HairpinnedICMPErrors(t *testing.T) {
	r := newRig(t, nat.Config{})
	extY := r.out(ping, hostY, srvA)
	res := r.send(true, ping, hostX, extY)
	if res.v.Action != nat.Hairpin {
		t.Fatalf("X -> %v: %v (%s), want hairpin", extY, res.v.Action, res.v.Reason)
	}
	extX := res.pv.From()
	for _, quote := range []int{28, 33} {
		e := icmpErrPkt(hostY.Addr(), extX.Addr(), icmpUnreachable, codePortUnreach, udpPkt(extX, hostY, "ping"), quote, 0)
		res = r.run(true, e)
		if res.v.Action != nat.Hairpin {
			t.Fatalf("Y's error: %v (%s), want hairpin", res.v.Action, res.v.Reason)
		}
		want := icmpErrPkt(extY.Addr(), hostX.Addr(), icmpUnreachable, codePortUnreach, udpPkt(hostX, extY, "ping"), quote, 0)
		if string(res.out) != string(want) {
			t.Fatalf("quote %d: hairpinned error\n got  % x\n want % x", quote, res.out, want)
		}
	}
}

// RFC 5508 REQ-8: when no session can be created (ports exhausted), the
// packet is dropped and ICMP destination unreachable code 13 goes back to
// the sender, quoting its packet; Config.NoICMPReplies turns that off.
func TestConformance_I8_AdminProhibitedWhenNoSession(t *testing.T) {
	r := newRig(t, nat.Config{Ports: tuple.MustParsePortSet("50000")})
	r.out(ping, hostX, srvA)
	orig := udpPkt(hostY, srvB, "ping")
	res := r.run(true, append([]byte(nil), orig...))
	if res.v.Action != nat.Reply {
		t.Fatalf("no port left: %v (%s), want reply", res.v.Action, res.v.Reason)
	}
	p := res.pv
	if p.ICMPType != icmpUnreachable || p.ICMPCode != codeAdminProhib || p.Dst != hostY.Addr() || !r.isExternal(p.Src) {
		t.Fatalf("reply ICMP %d/%d %v -> %v, want 3/13 to %v from the NAT", p.ICMPType, p.ICMPCode, p.Src, p.Dst, hostY.Addr())
	}
	if p.Inner == nil || string(p.innerBytes) != string(orig[:len(p.innerBytes)]) || len(p.innerBytes) < 28 {
		t.Fatalf("reply quotes % x, want the refused packet % x", p.innerBytes, orig)
	}
	// A query that cannot get an identifier (here: over the per-host
	// limit) is refused the same way.
	r = newRig(t, nat.Config{MaxPortsPerSubscriber: 1})
	r.echoOut(hostY.Addr(), 5, srvB.Addr(), 1)
	echo := icmpEchoPkt(hostY.Addr(), srvB.Addr(), icmpEcho, 6, 1)
	res = r.run(true, append([]byte(nil), echo...))
	if res.v.Action != nat.Reply || res.pv.ICMPType != icmpUnreachable || res.pv.ICMPCode != codeAdminProhib || res.pv.Dst != hostY.Addr() {
		t.Fatalf("second identifier over the limit: %v (%s), reply %d/%d to %v; want 3/13 to %v", res.v.Action, res.v.Reason, res.pv.ICMPType, res.pv.ICMPCode, res.pv.Dst, hostY.Addr())
	}
	r = newRig(t, nat.Config{Ports: tuple.MustParsePortSet("50000"), NoICMPReplies: true})
	r.out(ping, hostX, srvA)
	if res := r.run(true, udpPkt(hostY, srvB, "ping")); res.v.Action != nat.Drop {
		t.Fatalf("NoICMPReplies: %v, want drop", res.v.Action)
	}
}
