package nat

import (
	"fmt"
	"strings"
)

// The short names ParseMapping and ParseFiltering also accept (RFC 4787
// §4.1 and §5 abbreviations).
var mappingShort = [...]string{"", "eim", "adm", "apdm"}
var filteringShort = [...]string{"", "eif", "adf", "apdf"}

// ParseMapping parses an RFC 4787 §4.1 mapping behaviour: the String form
// ("endpoint-independent", "address-dependent",
// "address-and-port-dependent") or its abbreviation ("eim", "adm", "apdm").
// Case is ignored.
func ParseMapping(s string) (Mapping, error) {
	for i := 1; i < len(mappingNames); i++ {
		if strings.EqualFold(s, mappingNames[i]) || strings.EqualFold(s, mappingShort[i]) {
			return Mapping(i), nil
		}
	}
	return 0, fmt.Errorf("nat: unknown mapping %q (want eim, adm, apdm or the RFC 4787 term)", s)
}

// ParseFiltering parses an RFC 4787 §5 filtering behaviour: the String form
// ("endpoint-independent", "address-dependent",
// "address-and-port-dependent") or its abbreviation ("eif", "adf", "apdf").
// Case is ignored.
func ParseFiltering(s string) (Filtering, error) {
	for i := 1; i < len(filteringNames); i++ {
		if strings.EqualFold(s, filteringNames[i]) || strings.EqualFold(s, filteringShort[i]) {
			return Filtering(i), nil
		}
	}
	return 0, fmt.Errorf("nat: unknown filtering %q (want eif, adf, apdf or the RFC 4787 term)", s)
}

// MarshalText implements encoding.TextMarshaler with the String form (the
// RFC 4787 §4.1 term).
func (m Mapping) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseMapping (so
// that a YAML or JSON configuration can say `mapping: eim`, RFC 4787 §4.1).
func (m *Mapping) UnmarshalText(b []byte) error {
	v, err := ParseMapping(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MarshalText implements encoding.TextMarshaler with the String form (the
// RFC 4787 §5 term).
func (f Filtering) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseFiltering (so
// that a YAML or JSON configuration can say `filtering: apdf`, RFC 4787 §5).
func (f *Filtering) UnmarshalText(b []byte) error {
	v, err := ParseFiltering(string(b))
	if err != nil {
		return err
	}
	*f = v
	return nil
}
