package dial_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/tuple"
)

// A Dialer confined to one source address and a 2,048-port slice of its
// port space, plugged into an HTTP client. Each port can carry one
// connection to every distinct destination.
func ExampleDialer() {
	d := &dial.Dialer{
		Sources: []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		Ports:   tuple.MustParsePortSet("40960-43007"),
	}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := client.Get("http://192.0.2.80/")
	if errors.Is(err, dial.ErrExhausted) {
		fmt.Println("every port of the slice is in use toward 192.0.2.80:80")
		return
	}
	if err == nil {
		resp.Body.Close()
	}
}
