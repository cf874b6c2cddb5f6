package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestNatSimulateCLI(t *testing.T) {
	out, _, err := runCLI(t, "nat", "simulate", "--compare-overlapping", "--subscribers", "20", "--destinations", "4",
		"--flow-rate", "20", "--duration", "1m", "--ports", "2000-2099")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"no overlapping", "overlapping", "peak concurrent flows", "drops: ports-exhausted", "log bytes per flow"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCLI(t, "nat", "simulate", "--json", "--duration", "30s", "--udp-share", "0.5", "--preset", "cgn")
	var r map[string]any
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r["preset"] != "cgn" || r["flows"].(float64) == 0 {
		t.Fatalf("%v %s", err, out)
	}
}

func TestNatSimulateCLIBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--external", "nope"}, `--external "nope"`},
		{[]string{"--ports", "9-1"}, "--ports"},
		{[]string{"--overlapping", "maybe"}, `--overlapping "maybe"`},
		{[]string{"--preset", "nope"}, `unknown preset "nope"`},
		{[]string{"--subscribers", "-3"}, "Subscribers"},
	} {
		_, _, err := runCLI(t, append([]string{"nat", "simulate"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}
