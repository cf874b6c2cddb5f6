package gateway_test

import (
	"os"
	"strings"
	"testing"

	"github.com/portspace/portspace/internal/gwtest"
)

func TestMain(m *testing.M) {
	gwtest.Main()
	os.Exit(m.Run())
}

func TestSmoke(t *testing.T) {
	topo := gwtest.New(t, gwtest.Options{})
	g := topo.Start(t, gwtest.Spec{Preset: "symmetric"})
	out, err := topo.ClientNS.Run("ping", "-c", "2", "-i", "0.2", "-W", "2", gwtest.Server.String())
	t.Log(out, err)
	t.Log(topo.RouterNS.MustRun(t, "ip", "rule"))
	t.Log(topo.RouterNS.MustRun(t, "ip", "route", "show", "table", "all"))
	t.Logf("%+v", g.Stats(t))
	if !strings.Contains(out, " 0% packet loss") {
		t.Fatal("ping failed")
	}
}
