package doccheck

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// boundary lists the imports that only packages under internal/ (the single
// syscall and netlink boundary) may use in non-test code. The packages that
// do: internal/netsys (sockets, sock_diag), internal/bench (its census) and
// internal/steerlink (steer's routing rules, routes and nftables table,
// which need rtnetlink and nf_tables).
var boundary = []string{
	"golang.org/x/sys/unix",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/mdlayher/netlink",
	"github.com/google/nftables",
}

// TestSyscallBoundary fails when a package outside internal/ imports one of
// the boundary packages in non-test code.
func TestSyscallBoundary(t *testing.T) {
	root := "../.."
	checked := 0
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel == "internal" || (strings.HasPrefix(d.Name(), ".") && p != root) || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		checked++
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, b := range boundary {
				if path == b || strings.HasPrefix(path, b+"/") {
					t.Errorf("%s imports %s: only packages under internal/ may (the syscall and netlink boundary)", rel, path)
				}
			}
		}
		return nil
	})
	if checked == 0 {
		t.Fatal("no Go files checked; wrong root?")
	}
}
