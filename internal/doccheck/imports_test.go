package doccheck

import (
	"errors"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// boundary lists the imports (and their subpackages) that only the packages
// in syscallImporters may use in non-test code: raw system calls and
// netlink.
var boundary = []string{
	"golang.org/x/sys/unix",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/mdlayher/netlink",
	"github.com/google/nftables",
}

// syscallImporters is the allow-list: the package directories (relative to
// the module root) whose non-test code may import a boundary package, each
// with the reason it may. Everything else goes through internal/netsys.
// Adding a package is one line here, with its reason; once its directory
// exists the package must import a boundary package (a stale entry fails
// TestSyscallAllowList), and README.md and docs/architecture.md name it
// beside netsys.
var syscallImporters = map[string]string{
	"internal/netsys": "the syscall and netlink boundary itself: socket options, capability probes, sock_diag",
	"internal/tunnet": "the NAT gateway's kernel set-up: a multi-queue TUN device with virtio-net headers (TUNSETIFF), and the policy rules, routes, proxy-ARP entries it installs and removes over netlink",
	"internal/bench":  "the benchmark's census dumps sockets through sock_diag on its own, so that it checks the dialer (which uses netsys) instead of trusting it; RLIMIT_NOFILE and getrusage",
	// Wave 2 (each lands with its branch; an entry whose directory does
	// not exist yet is pending, not stale):
	"internal/steerlink": "steer's routing rules, routes (rtnetlink) and nftables table (nf_tables) in a namespace",
	"internal/udpbatch":  "recvmmsg/sendmmsg batches on the STUN server's hot path",
}

// Test files may import boundary packages: a test may check the kernel's
// view (a sock_diag dump, a socket option) independently of the code under
// test.

// violation is one forbidden import: the file (relative to the root) and
// the import path.
type violation struct{ file, path string }

// boundaryViolations walks the module at root and returns every non-test
// import of a boundary package by a package directory not in allowed, and
// the set of allowed directories that import one (to catch stale entries).
func boundaryViolations(root string, allowed map[string]string) (bad []violation, used map[string]bool, checked int, err error) {
	used = map[string]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
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
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		dir := filepath.ToSlash(filepath.Dir(rel))
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !slices.ContainsFunc(boundary, func(b string) bool { return path == b || strings.HasPrefix(path, b+"/") }) {
				continue
			}
			if _, ok := allowed[dir]; ok {
				used[dir] = true
				continue
			}
			bad = append(bad, violation{rel, path})
		}
		return nil
	})
	return bad, used, checked, err
}

// TestSyscallBoundary fails when a package that is not in syscallImporters
// imports x/sys/unix or a netlink package in non-test code.
func TestSyscallBoundary(t *testing.T) {
	bad, _, checked, err := boundaryViolations("../..", syscallImporters)
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no Go files checked; wrong root?")
	}
	for _, v := range bad {
		t.Errorf("%s imports %s: only %s may (add the package to syscallImporters in internal/doccheck/imports_test.go with its reason, or go through internal/netsys)",
			v.file, v.path, strings.Join(slices.Sorted(maps.Keys(syscallImporters)), " and "))
	}
}

// TestSyscallAllowList fails for an allow-list entry without a reason or
// whose package exists but imports no boundary package (any more), so that
// the list says exactly who imports them.
func TestSyscallAllowList(t *testing.T) {
	_, used, _, err := boundaryViolations("../..", syscallImporters)
	if err != nil {
		t.Fatal(err)
	}
	for dir, why := range syscallImporters {
		if strings.TrimSpace(why) == "" {
			t.Errorf("syscallImporters[%q] gives no reason", dir)
		}
		if _, err := os.Stat(filepath.Join("../..", dir)); errors.Is(err, fs.ErrNotExist) {
			continue // pending: the package has not landed yet
		}
		if !used[dir] {
			t.Errorf("syscallImporters lists %s, which imports no boundary package in non-test code: remove it", dir)
		}
	}
}

// TestSyscallBoundaryCatches runs the check over a small module of its own:
// an import of x/sys/unix outside the allow-list (also under internal/, and
// in a subpackage of an allowed one) is reported, one inside it and one in a
// test file are not.
func TestSyscallBoundaryCatches(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"internal/netsys/a.go":      `import _ "golang.org/x/sys/unix"`,
		"internal/netsys/sub/b.go":  `import _ "golang.org/x/sys/unix"`,
		"internal/other/c.go":       `import _ "github.com/vishvananda/netlink/nl"`,
		"dial/d.go":                 `import _ "golang.org/x/sys/unix"`,
		"dial/d_test.go":            `import _ "golang.org/x/sys/unix"`,
		"internal/bench/e.go":       `import _ "os"`,
		"testdata/ignored/f.go":     `import _ "golang.org/x/sys/unix"`,
		"nat/clean.go":              `import _ "net/netip"`,
		"internal/netsys/unused.go": `import _ "syscall"`,
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("package x\n"+body+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	allowed := map[string]string{"internal/netsys": "x", "internal/bench": "y"}
	bad, used, _, err := boundaryViolations(root, allowed)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range bad {
		got = append(got, v.file)
	}
	slices.Sort(got)
	want := []string{"dial/d.go", "internal/netsys/sub/b.go", "internal/other/c.go"}
	if !slices.Equal(got, want) {
		t.Errorf("violations %v, want %v", got, want)
	}
	if !used["internal/netsys"] || used["internal/bench"] {
		t.Errorf("used %v, want internal/netsys only (internal/bench's entry is stale there)", used)
	}
}
