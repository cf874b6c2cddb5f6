package steer

import (
	"bytes"
	"fmt"
	"strings"
)

// Format selects what Render writes.
type Format uint8

// The render formats.
const (
	// FormatIP is the ip(8) commands of FormIP: host routes, one rule per
	// slice range and protocol, the catch-all rules.
	FormatIP Format = iota + 1
	// FormatNFT is the nft -f file of FormNFT (it replaces the table
	// atomically, so it can be loaded again).
	FormatNFT
	// FormatNFTIP is the ip(8) commands that go with FormatNFT: host routes,
	// one fwmark rule per host, the catch-all rules.
	FormatNFTIP
	// FormatHosts is, per host, the commands that make it hold its shared
	// addresses without answering ARP or neighbour solicitations for them.
	FormatHosts
)

// ParseFormat parses "ip", "nft", "nft-ip" or "hosts".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "ip":
		return FormatIP, nil
	case "nft":
		return FormatNFT, nil
	case "nft-ip":
		return FormatNFTIP, nil
	case "hosts":
		return FormatHosts, nil
	}
	return 0, fmt.Errorf("steer: unknown format %q (want ip, nft, nft-ip or hosts)", s)
}

// Render returns the plan in format f. The output is byte-stable for a
// given plan.
func Render(p Plan, f Format) ([]byte, error) {
	var b bytes.Buffer
	switch f {
	case FormatIP:
		p.renderIP(&b, FormIP)
	case FormatNFTIP:
		p.renderIP(&b, FormNFT)
	case FormatNFT:
		p.renderNFT(&b)
	case FormatHosts:
		p.renderHosts(&b)
	default:
		return nil, fmt.Errorf("steer: unknown format %d", f)
	}
	return b.Bytes(), nil
}

func (p Plan) header(b *bytes.Buffer, what string) {
	o := p.opts
	fmt.Fprintf(b, "# portspace steer: %s; %d slices held by %d hosts on %d shared addresses\n",
		what, len(p.Slices), len(p.Hosts), len(p.Shared))
	fmt.Fprintf(b, "# owned: rule priorities %d-%d, tables %d-%d, marks %s-%s, nft table inet %s\n",
		o.Priority, o.Priority+PriorityRange-1, o.TableBase, o.TableBase+uint32(o.MaxHosts),
		hexMark(o.MarkBase+1), hexMark(o.MarkBase+uint32(o.MaxHosts)), o.NFTable)
	for _, id := range p.Skipped {
		fmt.Fprintf(b, "# not steered (the claim named no host): %s\n", id)
	}
}

func (p Plan) renderIP(b *bytes.Buffer, f Form) {
	if f == FormIP {
		p.header(b, "form ip, for a fresh gateway (portspace steer apply is the idempotent way)")
	} else {
		p.header(b, "routes and fwmark rules of form nft (load the nft -f file too)")
	}
	for _, r := range p.Routes() {
		if r.Via.IsValid() {
			fmt.Fprintf(b, "ip %sroute replace default via %s table %d\n", familyWord(r.V6), r.Via, r.Table)
		} else {
			fmt.Fprintf(b, "ip %sroute replace unreachable default table %d\n", familyWord(r.V6), r.Table)
		}
	}
	for _, r := range p.Rules(f) {
		var s strings.Builder
		fmt.Fprintf(&s, "ip %srule add priority %d", familyWord(r.V6), r.Priority)
		if r.Dst.IsValid() {
			fmt.Fprintf(&s, " to %s", r.Dst)
		}
		if r.Mask != 0 {
			fmt.Fprintf(&s, " fwmark %s/%s", hexMark(r.Mark), hexMark(r.Mask))
		}
		if r.Proto != 0 {
			fmt.Fprintf(&s, " ipproto %s", r.Proto)
		}
		if r.Dport.IsValid() {
			if r.Dport.First() == r.Dport.Last() {
				fmt.Fprintf(&s, " dport %d", r.Dport.First())
			} else {
				fmt.Fprintf(&s, " dport %d-%d", r.Dport.First(), r.Dport.Last())
			}
		}
		if r.Goto != 0 {
			fmt.Fprintf(&s, " goto %d\n", r.Goto)
		} else {
			fmt.Fprintf(&s, " lookup %d\n", r.Table)
		}
		b.WriteString(s.String())
	}
}

func (p Plan) renderNFT(b *bytes.Buffer) {
	p.header(b, "form nft (nft -f; the routes and fwmark rules are --format nft-ip)")
	t := p.opts.NFTable
	// Declaring then deleting the table makes the file replace it in one
	// transaction, whether or not it exists.
	fmt.Fprintf(b, "table inet %s\ndelete table inet %s\n\ntable inet %s {\n", t, t, t)
	maps, chains := p.NFT()
	for _, m := range maps {
		fmt.Fprintf(b, "\tmap %s {\n\t\t# %s\n\t\ttype inet_service : verdict\n", m.Name, m.Addr)
		if !m.Hash {
			b.WriteString("\t\tflags interval\n")
		}
		if len(m.Elems) > 0 {
			b.WriteString("\t\telements = {")
			for i, e := range m.Elems {
				if i > 0 {
					b.WriteString(",")
				}
				if m.Hash || e.Ports.First() == e.Ports.Last() {
					fmt.Fprintf(b, "\n\t\t\t%d comment %q : goto %s", e.Ports.First(), e.Comment, e.Chain)
				} else {
					fmt.Fprintf(b, "\n\t\t\t%d-%d comment %q : goto %s", e.Ports.First(), e.Ports.Last(), e.Comment, e.Chain)
				}
			}
			b.WriteString("\n\t\t}\n")
		}
		b.WriteString("\t}\n\n")
	}
	for _, c := range chains {
		fmt.Fprintf(b, "\tchain %s {\n\t\t# %s\n\t\tmeta mark set %s\n\t}\n\n", c.Name, c.Host, hexMark(c.Mark))
	}
	b.WriteString("\tchain prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n")
	for _, m := range maps {
		fam := "ip"
		if m.Addr.Is6() {
			fam = "ip6"
		}
		for _, proto := range []string{"tcp", "udp"} {
			if m.Hash && m.Shift > 0 {
				fmt.Fprintf(b, "\t\t%s daddr %s %s dport & %#04x vmap @%s\n", fam, m.Addr, proto, m.Mask(), m.Name)
			} else {
				fmt.Fprintf(b, "\t\t%s daddr %s %s dport vmap @%s\n", fam, m.Addr, proto, m.Name)
			}
		}
	}
	b.WriteString("\t}\n}\n")
}

func (p Plan) renderHosts(b *bytes.Buffer) {
	p.header(b, "what each host needs to hold its shared addresses without answering ARP/ND for them")
	link := p.opts.HostLink
	for _, h := range p.Hosts {
		fmt.Fprintf(b, "\n# host %s (table %d): holds %s\n", h.Addr, h.Table, joinAddrs(h.Shared))
		label := ""
		if link == "lo" {
			label = " label lo:portspace"
		} else {
			fmt.Fprintf(b, "ip link add name %s type dummy\n", link)
			fmt.Fprintf(b, "ip link set %s arp off up\n", link)
		}
		for _, a := range h.Shared {
			if a.Is6() {
				fmt.Fprintf(b, "ip -6 addr add %s/128 dev %s nodad\n", a, link)
			} else {
				fmt.Fprintf(b, "ip addr add %s/32 dev %s%s\n", a, link, label)
			}
		}
		b.WriteString("sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2\n")
	}
}
