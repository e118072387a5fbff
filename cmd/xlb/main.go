// Command xlb puts a PostgreSQL primary/replica cluster behind one virtual
// IP with an XDP datapath: VIP:3000 to the primary, VIP:3001 to the replicas.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	app := &cli.App{
		Name:  "xlb",
		Usage: "PostgreSQL high availability behind one address, forwarded by XDP",
		Commands: []*cli.Command{
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "xlb", version)
					return nil
				},
			},
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "xlb:", err)
		os.Exit(1)
	}
}
