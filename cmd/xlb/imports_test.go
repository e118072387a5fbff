package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/deploy/lab"
)

const (
	module  = "github.com/xlb-dev/xlb"
	labPath = module + "/deploy/lab"
)

// goList runs go list -deps on pkgs and returns every package in their
// import graphs (tests excluded).
func goList(t *testing.T, pkgs ...string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("finding the go command: %v", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(goTool, append([]string{"list", "-deps"}, pkgs...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v: %s", strings.Join(pkgs, " "), err, stderr.String())
	}
	return strings.Fields(string(out))
}

// TestNoProductPackageImportsTheLab checks the dependency rule of
// DESIGN.md: no product package has deploy/lab in its import graph, and
// in cmd/xlb only the lab subcommand's file (lab.go) imports it, so the
// rest of the binary (xlb run, the CLI, xlb pg rejoin) does not depend on
// the lab: go list -deps of the imports of every other file of cmd/xlb
// excludes it.
func TestNoProductPackageImportsTheLab(t *testing.T) {
	for _, pkg := range []string{"control", "control/postgres", "health", "loader", "vip"} {
		t.Run(pkg, func(t *testing.T) {
			deps := goList(t, module+"/"+pkg)
			if !slices.Contains(deps, module+"/"+pkg) {
				t.Fatalf("go list -deps %s lists %d packages, not the package itself", pkg, len(deps))
			}
			if slices.Contains(deps, labPath) {
				t.Errorf("%s imports %s (directly or not)", pkg, labPath)
			}
		})
	}

	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var importers []string
	rest := map[string]bool{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if path == labPath {
				importers = append(importers, name)
			} else {
				rest[path] = true
			}
		}
	}
	if diff := cmp.Diff([]string{"lab.go"}, importers); diff != "" {
		t.Errorf("files of cmd/xlb importing deploy/lab (-want +got):\n%s", diff)
	}
	others := slices.Sorted(func(yield func(string) bool) {
		for p := range rest {
			if !yield(p) {
				return
			}
		}
	})
	deps := goList(t, others...)
	if !slices.Contains(deps, module+"/control/postgres") {
		t.Fatalf("go list -deps of cmd/xlb's other imports lacks control/postgres: %v", others)
	}
	if slices.Contains(deps, labPath) {
		t.Errorf("the imports of cmd/xlb outside lab.go pull in %s: %v", labPath, others)
	}
}

// TestNoLabPasswordCompiledIn checks that the lab declares no password as
// a constant or an initialised variable (its passwords are made per lab,
// lab.NewSecrets), and that the xlb binary holds none of the passwords the
// lab had before they were.
func TestNoLabPasswordCompiledIn(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "lab")
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkgs {
		for _, f := range p.Files {
			ast.Inspect(f, func(n ast.Node) bool {
				vs, ok := n.(*ast.ValueSpec)
				if !ok {
					return true
				}
				for i, name := range vs.Names {
					if i < len(vs.Values) && strings.Contains(strings.ToLower(name.Name), "password") {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							t.Errorf("%v: %s = %s: a password compiled in", fset.Position(name.Pos()), name.Name, lit.Value)
						}
					}
				}
				return true
			})
		}
	}

	bin := filepath.Join(t.TempDir(), "xlb")
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := lab.NewSecrets()
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{"ramostest123", "xlbadmintest123", "replicatortest123", s.Password} {
		if bytes.Contains(b, []byte(pw)) {
			t.Errorf("the xlb binary holds %q", pw)
		}
	}
	if !bytes.Contains(b, []byte(lab.User)) {
		t.Errorf("the xlb binary lacks the lab's user name %q: is this the binary with the lab subcommand?", lab.User)
	}
}
