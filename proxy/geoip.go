package proxy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/oschwald/maxminddb-golang/v2"
)

// GeoIP maps client addresses to ISO 3166-1 country codes from an MMDB file
// (GeoLite2/GeoIP2 Country or City, or any MMDB with country.iso_code).
type GeoIP struct {
	r *maxminddb.Reader
}

// OpenGeoIP opens an MMDB file and checks that it can be read.
func OpenGeoIP(path string) (*GeoIP, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: geoip: %w", err)
	}
	return &GeoIP{r: r}, nil
}

// Country returns the lower-case ISO country code of a, or "" when the
// database has none.
func (g *GeoIP) Country(a netip.Addr) string {
	var rec struct {
		Country struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"country"`
	}
	if err := g.r.Lookup(a.Unmap()).Decode(&rec); err != nil {
		return ""
	}
	return strings.ToLower(rec.Country.ISOCode)
}

// Close releases the database.
func (g *GeoIP) Close() error { return g.r.Close() }
