// Package doccheck holds the tests that every package of the module has a
// package doc and every exported name a doc comment, and that only the
// packages on its allow-list (internal/netsys, the syscall and netlink
// boundary, and internal/bench for its independent census) import
// golang.org/x/sys/unix or netlink. It has no code of its own.
package doccheck
