// Package hugepage asks the operating system to back large, randomly
// accessed arrays (such as the NAT's hash index) with transparent huge pages,
// which cuts TLB misses. It is part of portspace's syscall boundary
// (internal/): callers stay free of OS calls.
package hugepage
