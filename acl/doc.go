// Package acl generates stateless access-control lists (AWS network ACLs and
// an nftables ruleset) from a declarative YAML policy of services, zones and
// flows.
//
// A stateless filter does not remember connections, so every permitted flow
// from zone A to zone B on a service needs four rules: A's egress to B on the
// service port, B's ingress from A on the service port, B's egress back to A
// on A's ephemeral (client) port range, and A's ingress from B on that range.
// The return range is what lets replies through without opening A's service
// ports; this package computes it from named platform profiles (see Profile),
// lints the policy for service ports that fall inside it, merges overlapping
// and adjacent port ranges and CIDRs so the rule count is minimal, numbers
// the rules stably, checks AWS's per-ACL rule quota, and renders Terraform,
// EC2 API JSON, CloudFormation, nftables or a readable table. Output is a
// pure function of the input: the same policy gives byte-identical text.
//
// ParseNG reads the input format of the original naclgen tool
// (github.com/bsycorp/naclgen) so that its policies can be imported.
package acl
