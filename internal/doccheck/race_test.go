package doccheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// racePkgs returns the directories of the Makefile's RACE_PKGS line.
func racePkgs(t *testing.T, makefile string) []string {
	t.Helper()
	data, err := os.ReadFile(makefile)
	if err != nil {
		t.Fatal(err)
	}
	// The assignment may continue over lines ending in a backslash.
	m := regexp.MustCompile(`(?m)^RACE_PKGS\s*\??=\s*((?:.*\\\n)*.*)$`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("%s has no RACE_PKGS line", makefile)
	}
	return strings.Fields(strings.ReplaceAll(string(m[1]), "\\\n", " "))
}

// goroutineDirs returns the package directories under root whose non-test
// code starts a goroutine (a go statement).
func goroutineDirs(t *testing.T, root string) map[string]bool {
	t.Helper()
	dirs := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if (strings.HasPrefix(d.Name(), ".") && p != root) || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if _, ok := n.(*ast.GoStmt); ok {
				rel, _ := filepath.Rel(root, filepath.Dir(p))
				dirs[filepath.ToSlash(rel)] = true
				return false
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// covered reports whether dir is one of pkgs or below one (RACE_PKGS
// entries include their subpackages).
func covered(dir string, pkgs []string) bool {
	for _, p := range pkgs {
		if dir == p || strings.HasPrefix(dir, p+"/") {
			return true
		}
	}
	return false
}

// TestRacePkgsCoverGoroutines fails when a package that starts goroutines
// is missing from the Makefile's RACE_PKGS, so that make test runs its
// tests under the race detector (cmd/portspace is exempt: it is a thin
// layer whose packages are raced).
func TestRacePkgsCoverGoroutines(t *testing.T) {
	pkgs := racePkgs(t, "../../Makefile")
	for _, want := range []string{"dial", "internal/bench", "punch"} { // punch: on the continued line
		if !covered(want, pkgs) {
			t.Errorf("RACE_PKGS %v lacks %s", pkgs, want)
		}
	}
	for dir := range goroutineDirs(t, "../..") {
		if dir == "cmd/portspace" || covered(dir, pkgs) {
			continue
		}
		t.Errorf("%s starts goroutines but is not in the Makefile's RACE_PKGS (%v): add it, with its reason", dir, pkgs)
	}
}

// TestGoroutineDirsFinds checks the detector on a small tree of its own.
func TestGoroutineDirsFinds(t *testing.T) {
	root := t.TempDir()
	for name, body := range map[string]string{
		"a/a.go":      "package a\nfunc f() { go func() {}() }\n",
		"a/b/b.go":    "package b\nfunc f() {}\n",
		"c/c_test.go": "package c\nfunc f() { go f() }\n",
		"d/d.go":      "package d\nfunc f() { defer func() { go g() }() }\nfunc g() {}\n",
	} {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := goroutineDirs(t, root)
	if len(got) != 2 || !got["a"] || !got["d"] {
		t.Errorf("goroutineDirs = %v, want a and d", got)
	}
	if !covered("a/b", []string{"a"}) || covered("ab", []string{"a"}) {
		t.Errorf("covered does not treat entries as directory prefixes")
	}
}
