package steer

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/portspace/portspace/internal/steerlink"
)

// Stats counts what an Apply changed; the zero Stats means the gateway
// already held the plan.
type Stats struct {
	RulesAdded, RulesDeleted   int
	RoutesAdded, RoutesDeleted int
	// NFT reports whether the nftables table was replaced or deleted.
	NFT bool
}

// Changed reports whether the Apply changed anything.
func (s Stats) Changed() bool { return s != Stats{} }

// Gateway applies plans to one network namespace through netlink.
type Gateway struct {
	h *steerlink.Handle
}

// OpenGateway connects to the network namespace at netnsPath (such as
// /run/netns/gw), or to the process's own namespace when it is empty.
// Applying needs CAP_NET_ADMIN there.
func OpenGateway(netnsPath string) (*Gateway, error) {
	h, err := steerlink.Open(netnsPath)
	if err != nil {
		return nil, wrapLink(err)
	}
	return &Gateway{h: h}, nil
}

// Close releases the gateway's netlink sockets.
func (g *Gateway) Close() error { return g.h.Close() }

func wrapLink(err error) error {
	if errors.Is(err, steerlink.ErrUnsupported) {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return fmt.Errorf("steer: %w", err)
}

func owned(o Options) steerlink.Owned {
	o = o.withDefaults()
	return steerlink.Owned{PrioLo: o.Priority, PrioHi: o.Priority + PriorityRange - 1,
		TableLo: o.TableBase, TableHi: o.TableBase + uint32(o.MaxHosts), NFTable: o.NFTable}
}

// State returns the plan in form f as the netlink state steerlink applies.
func (p Plan) state(f Form) steerlink.State {
	var st steerlink.State
	for _, r := range p.Rules(f) {
		lr := steerlink.Rule{V6: r.V6, Priority: r.Priority, Table: r.Table, Goto: r.Goto, Dst: r.Dst, Proto: uint8(r.Proto),
			Mark: r.Mark, Mask: r.Mask}
		if r.Dport.IsValid() {
			lr.HasDport, lr.DportLo, lr.DportHi = true, r.Dport.First(), r.Dport.Last()
		}
		st.Rules = append(st.Rules, lr)
	}
	for _, r := range p.Routes() {
		st.Routes = append(st.Routes, steerlink.Route{V6: r.V6, Table: r.Table, Via: r.Via})
	}
	if f == FormNFT {
		maps, chains := p.NFT()
		n := &steerlink.NFT{}
		for _, m := range maps {
			lm := steerlink.NFTMap{Name: m.Name, Addr: m.Addr, Hash: m.Hash, Mask: m.Mask()}
			for _, e := range m.Elems {
				lm.Elems = append(lm.Elems, steerlink.NFTElem{Lo: e.Ports.First(), Hi: e.Ports.Last(), Chain: e.Chain, Comment: e.Comment})
			}
			n.Maps = append(n.Maps, lm)
		}
		for _, c := range chains {
			n.Chains = append(n.Chains, steerlink.NFTChain{Name: c.Name, Mark: c.Mark})
		}
		st.NFT = n
	}
	return st
}

// Apply makes the gateway hold plan p in form f, idempotently: only the
// difference is changed, the nftables table is replaced in one
// transaction, and nothing outside p's owned ranges is touched. Applying
// one form removes the other's rules and, for FormIP, the nftables table.
func (g *Gateway) Apply(p Plan, f Form) (Stats, error) {
	if f != FormIP && f != FormNFT {
		return Stats{}, fmt.Errorf("steer: unknown form %d", f)
	}
	s, err := g.h.Apply(owned(p.opts), p.state(f))
	if err != nil {
		return Stats(s), wrapLink(err)
	}
	return Stats(s), nil
}

// Clear removes everything steer installed in the ranges of o.
func (g *Gateway) Clear(o Options) (Stats, error) {
	if err := o.Validate(); err != nil {
		return Stats{}, err
	}
	s, err := g.h.Apply(owned(o), steerlink.State{})
	if err != nil {
		return Stats(s), wrapLink(err)
	}
	return Stats(s), nil
}

// Tables returns the table each host has on the gateway now, for NewPlan's
// keep argument.
func (g *Gateway) Tables(o Options) (map[netip.Addr]uint32, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	m, err := g.h.HostTables(owned(o))
	if err != nil {
		return nil, wrapLink(err)
	}
	return m, nil
}

// HoldShared makes the host namespace at netnsPath ("" for the process's
// own) hold addrs on the dummy link o.HostLink (ARP off) and sets its
// arp_ignore=1 and arp_announce=2, so that it accepts the steered replies
// for the shared addresses without answering ARP or neighbour
// solicitations for them. Addresses on that link not in addrs are removed.
func HoldShared(netnsPath string, o Options, addrs []netip.Addr) error {
	if err := o.Validate(); err != nil {
		return err
	}
	h, err := steerlink.Open(netnsPath)
	if err != nil {
		return wrapLink(err)
	}
	defer h.Close()
	if err := h.HoldShared(o.withDefaults().HostLink, addrs); err != nil {
		return wrapLink(err)
	}
	return nil
}
