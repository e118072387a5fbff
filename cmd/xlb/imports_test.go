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
	"strings"
	"testing"

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
// DESIGN.md: the xlb binary users install, and every product package,
// links neither the lab (deploy/lab, fault injection included) nor the
// testing package; the lab's commands live in cmd/xlb-lab.
func TestNoProductPackageImportsTheLab(t *testing.T) {
	for _, pkg := range []string{"cmd/xlb", "control", "control/postgres", "health", "loader", "vip"} {
		t.Run(pkg, func(t *testing.T) {
			deps := goList(t, module+"/"+pkg)
			if !slices.Contains(deps, module+"/"+pkg) {
				t.Fatalf("go list -deps %s lists %d packages, not the package itself", pkg, len(deps))
			}
			for _, d := range deps {
				if d == "testing" || d == labPath || strings.HasPrefix(d, labPath+"/") {
					t.Errorf("%s links %s (directly or not)", pkg, d)
				}
			}
		})
	}
	// The lab binary does link the lab: the check above looks at the
	// right import path.
	if deps := goList(t, module+"/cmd/xlb-lab"); !slices.Contains(deps, labPath) {
		t.Errorf("go list -deps cmd/xlb-lab lacks %s: has the lab moved?", labPath)
	}
}

// TestNoLabPasswordCompiledIn checks that the lab declares no password as
// a constant or an initialised variable (its passwords are made per lab,
// lab.NewSecrets), and that neither the xlb nor the xlb-lab binary holds
// any of the passwords the lab had before they were.
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

	dir = t.TempDir()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	s, err := lab.NewSecrets()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range []string{"xlb", "xlb-lab"} {
		bin := filepath.Join(dir, pkg)
		if out, err := exec.Command(goTool, "build", "-o", bin, module+"/cmd/"+pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build cmd/%s: %v: %s", pkg, err, out)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, pw := range []string{"ramostest123", "xlbadmintest123", "replicatortest123", s.Password} {
			if bytes.Contains(b, []byte(pw)) {
				t.Errorf("the %s binary holds %q", pkg, pw)
			}
		}
		if pkg == "xlb-lab" && !bytes.Contains(b, []byte(lab.User)) {
			t.Errorf("the xlb-lab binary lacks the lab's user name %q: is this the lab's binary?", lab.User)
		}
	}
}
