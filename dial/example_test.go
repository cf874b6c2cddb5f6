package dial_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"

	"github.com/portspace/portspace/dial"
	"github.com/portspace/portspace/tuple"
)

// A Dialer confined to one source address and a two-port slice of its port
// space, plugged into an HTTP client, then used directly: each port carries
// one connection to every distinct destination, so two ports reach two
// servers with four connections, and a fifth toward one of them finds
// every port taken. It runs on loopback (servers on 127.0.0.1 to
// 127.0.0.3), so it needs no network and no privileges.
func ExampleDialer() {
	var servers []*httptest.Server
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		ln, err := net.Listen("tcp4", ip+":0")
		if err != nil {
			fmt.Println(err)
			return
		}
		s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello from "+r.Host)
		}))
		s.Listener.Close()
		s.Listener = ln
		s.Start()
		defer s.Close()
		servers = append(servers, s)
	}
	d := &dial.Dialer{
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Ports:   tuple.MustParsePortSet("61417-61418"),
	}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := client.Get(servers[2].URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	client.CloseIdleConnections()
	fmt.Println(resp.Status, strings.HasPrefix(string(body), "hello from 127.0.0.3:"))

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, s := range servers[:2] {
		for range 2 {
			c, err := d.Dial("tcp", s.Listener.Addr().String())
			if err != nil {
				fmt.Println(err)
				return
			}
			conns = append(conns, c)
		}
	}
	ports := map[string]bool{}
	for _, c := range conns {
		ports[c.LocalAddr().String()] = true
	}
	fmt.Println(len(conns), "connections from", len(ports), "local endpoints")
	_, err = d.Dial("tcp", servers[0].Listener.Addr().String())
	fmt.Println("exhausted:", errors.Is(err, dial.ErrExhausted))
	// Output:
	// 200 OK true
	// 4 connections from 2 local endpoints
	// exhausted: true
}
