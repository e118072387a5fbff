package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// bashCompletion asks xlb itself for the words that may come next
// (urfave/cli's --generate-bash-completion).
const bashCompletion = `# bash completion for xlb. Load it with: source <(xlb completion bash)
_xlb_complete() {
	local cur="${COMP_WORDS[COMP_CWORD]}" words
	if [[ "$cur" == -* ]]; then
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _xlb_complete xlb
`

var completionCommand = &cli.Command{
	Name:      "completion",
	Usage:     "print a shell completion script: source <(xlb completion bash)",
	ArgsUsage: "bash",
	Action: func(c *cli.Context) error {
		if sh := c.Args().First(); sh != "bash" {
			return fmt.Errorf("completion %q: only bash is supported", sh)
		}
		fmt.Fprint(c.App.Writer, bashCompletion)
		return nil
	},
}
