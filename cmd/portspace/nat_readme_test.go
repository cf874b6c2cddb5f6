package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeNATExample runs the README's NAT log-and-whois example as
// written, with its temporary directory made by the test: every file it
// writes is under that directory (not in the checkout), and whois finds the
// holder (exit status 0).
func TestReadmeNATExample(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "### Run a NAT engine")
	if start < 0 {
		t.Fatal("README has no NAT section")
	}
	block := s[start:]
	block = block[strings.Index(block, "```sh")+5:]
	block = block[:strings.Index(block, "```")]
	block = strings.ReplaceAll(block, "\\\n", " ")
	dir := t.TempDir()
	ran := 0
	for _, line := range strings.Split(block, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "dir=") {
			continue
		}
		if !strings.HasPrefix(line, "go run ./cmd/portspace ") {
			t.Fatalf("README NAT example line %q is not a portspace command", line)
		}
		args := strings.Fields(strings.ReplaceAll(strings.ReplaceAll(line, `"$dir`, dir), `"`, ""))[3:]
		if !strings.Contains(line, "--log") {
			continue // the long comparison run; TestNatSimulateCLI covers it
		}
		for i, a := range args {
			if a == "--log" && (i+1 == len(args) || !strings.HasPrefix(args[i+1], dir+string(filepath.Separator))) {
				t.Fatalf("README example writes its log outside the temporary directory: %q", line)
			}
		}
		if _, _, err := runCLI(t, args...); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		ran++
	}
	if ran != 2 {
		t.Fatalf("ran %d commands of the README NAT example, want simulate and whois", ran)
	}
}
