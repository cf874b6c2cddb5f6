package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// completeFlag makes the shell complete the values of cmd's flag from
// values (each may carry a description after a tab, "tcp\tRFC 9293").
// Every subcommand registers its flag values through this helper; the
// "completion" subcommand (bash, zsh, fish, powershell) comes with cobra.
// Bash needs the bash-completion package for the script it writes.
func completeFlag(cmd *cobra.Command, flag string, values ...string) {
	_ = cmd.RegisterFlagCompletionFunc(flag, completeValues(values...))
}

// completeValues returns a completion function that offers the values
// starting with what was typed, and no file names.
func completeValues(values ...string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, v := range values {
			if strings.HasPrefix(v, toComplete) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeList returns a completion function for a comma-separated list
// of values (--ports linux,windows): it completes the last item and keeps
// what comes before it.
func completeList(values ...string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		head, last := "", toComplete
		if i := strings.LastIndex(toComplete, ","); i >= 0 {
			head, last = toComplete[:i+1], toComplete[i+1:]
		}
		var out []cobra.Completion
		for _, v := range values {
			if strings.HasPrefix(v, last) {
				out = append(out, head+v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	}
}
