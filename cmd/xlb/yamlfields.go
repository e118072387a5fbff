package main

import (
	"fmt"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// unknownField returns the path (like "postgres.sslmod" or
// "nodes[1].adress") and line of the first key in n that no field of t
// decodes, or "" when every key is known. It follows the same rules as
// yaml.v3's decoder with KnownFields(true), which decides: this only
// names what it refused. A type with its own UnmarshalYAML, a map or an
// interface takes any key.
func unknownField(n *yaml.Node, t reflect.Type, path string) (string, int) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.Unmarshaler]()) {
		return "", 0
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p, l := unknownField(c, t, path); p != "" {
				return p, l
			}
		}
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return "", 0
		}
		for i, c := range n.Content {
			if p, l := unknownField(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p, l
			}
		}
	case yaml.MappingNode:
		if t.Kind() != reflect.Struct {
			return "", 0
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			name := k.Value
			if path != "" {
				name = path + "." + k.Value
			}
			ft, ok := fields[k.Value]
			if !ok {
				if k.Tag == "!!merge" {
					continue
				}
				return name, k.Line
			}
			if p, l := unknownField(v, ft, name); p != "" {
				return p, l
			}
		}
	}
	return "", 0
}

// yamlFields maps the keys a struct type decodes to their types, inlined
// structs included.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range yamlFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}
