package dial

import (
	"net"
	"testing"
	"time"
)

// TestInterfaceListTTL: the per-interface lookups use the namespace's
// interface indices, read once and reused for less than ifaceTTL on the
// Dialer's clock (a fake one here), then read again; the list holds every
// interface net.Interfaces names (lo at least).
func TestInterfaceListTTL(t *testing.T) {
	d := &Dialer{}
	st := d.init()
	clk := newFakeClock()
	st.sel.now = clk.now
	first, err := st.interfaces()
	if err != nil {
		t.Fatal(err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(ifs) || len(first) == 0 {
		t.Fatalf("interface indices %v, want the %d of net.Interfaces", first, len(ifs))
	}
	l0 := st.ifs.Load()
	clk.add(ifaceTTL - time.Millisecond)
	if _, err := st.interfaces(); err != nil || st.ifs.Load() != l0 {
		t.Fatalf("the list was read again before ifaceTTL (%v)", err)
	}
	clk.add(time.Millisecond)
	if _, err := st.interfaces(); err != nil || st.ifs.Load() == l0 {
		t.Fatalf("the list was not read again after ifaceTTL (%v)", err)
	}
	if ifaceTTL != time.Second {
		t.Errorf("ifaceTTL %v; docs/dial.md says 1 s", ifaceTTL)
	}
}
