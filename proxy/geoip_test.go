package proxy

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// writeMMDB writes a small country database: 127.0.0.0/8 is DE, ::1/128
// is FR.
func writeMMDB(t *testing.T) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "Test-Country", IncludeReservedNetworks: true, IPVersion: 6, RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, cc := range map[string]string{"127.0.0.0/8": "DE", "::1/128": "FR"} {
		_, n, _ := net.ParseCIDR(cidr)
		rec := mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(cc)}}
		if err := tree.Insert(n, rec); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "country.mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

// TestGeoIPTraits: with geoip set, a client on 127.0.0.1 gets geo=de and
// is served by a DE egress and refused (X'02') by an FR-only one.
func TestGeoIPTraits(t *testing.T) {
	path := writeMMDB(t)
	g, err := OpenGeoIP(path)
	if err != nil {
		t.Fatal(err)
	}
	if cc := g.Country(mustAddr("127.0.0.5")); cc != "de" {
		t.Errorf("127.0.0.5: %q, want de", cc)
	}
	if cc := g.Country(mustAddr("::1")); cc != "fr" {
		t.Errorf("::1: %q, want fr", cc)
	}
	g.Close()
	echo := echoServer(t, "127.0.0.10")
	de := startProxy(t, "geoip: "+path, &DialerEgress{Dialer: testDialer(), Traits: map[string]string{"geo": "de"}})
	c, rep, _, err := socksDial(t, de.addr, "", "", cmdConnect, addrBytes(echo))
	if err != nil || rep != 0 {
		t.Fatalf("DE client through a DE egress: reply %d err %v", rep, err)
	}
	c.Close()
	fr := startProxy(t, "geoip: "+path, &DialerEgress{Dialer: testDialer(), Traits: map[string]string{"geo": "fr"}})
	if _, rep, _, _ := socksDial(t, fr.addr, "", "", cmdConnect, addrBytes(echo)); rep != RepNotAllowed {
		t.Errorf("DE client through an FR-only egress: reply %d, want X'02'", rep)
	}
}

// TestGeoIPUnreadable: an unreadable MMDB is refused at start with the
// file's name.
func TestGeoIPUnreadable(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.mmdb")
	os.WriteFile(bad, []byte("not an mmdb"), 0o600)
	cfg, _ := ParseConfig("g.yaml", []byte("geoip: "+bad))
	_, err := NewServer(cfg, &DialerEgress{Dialer: testDialer()}, Options{})
	if err == nil || !strings.Contains(err.Error(), "g.yaml: geoip "+bad) {
		t.Errorf("got %v", err)
	}
}
