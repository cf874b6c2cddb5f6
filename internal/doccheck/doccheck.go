// Package doccheck holds the test that every package of the module has a
// package doc and every exported name a doc comment (convention 7 in
// DEVELOPERS.md). It has no code of its own.
package doccheck
