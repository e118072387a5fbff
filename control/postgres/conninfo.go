package postgres

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// connInfo is a libpq connection string (primary_conninfo) as its
// keyword/value pairs, in order.
type connInfo []connParam

type connParam struct{ Key, Value string }

// errConnInfo means a connection string is malformed. Errors wrapping it
// give a byte offset, never a keyword or value: the string may hold a
// password.
var errConnInfo = errors.New("malformed connection string")

// parseConnInfo parses a libpq connection string as libpq does: either
// keyword = value pairs separated by whitespace, a value in single quotes
// when it holds whitespace or is empty, a backslash taking the next
// character literally (quoted or not); or a postgresql:// (postgres://)
// URI, whose parts become the pairs user, password, host, port, dbname and
// then its parameters, percent-decoded. Keywords must be letters, digits
// and underscores but are not checked against libpq's list.
func parseConnInfo(s string) (connInfo, error) {
	if strings.HasPrefix(s, "postgresql://") || strings.HasPrefix(s, "postgres://") {
		return parseConnURI(s)
	}
	var c connInfo
	i := 0
	skip := func() {
		for i < len(s) && isConnSpace(s[i]) {
			i++
		}
	}
	for {
		skip()
		if i == len(s) {
			return c, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isConnSpace(s[i]) {
			i++
		}
		key := s[start:i]
		skip()
		if key == "" || i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("%w: keyword without \"=\" at byte %d", errConnInfo, start)
		}
		if !isConnKeyword(key) {
			return nil, fmt.Errorf("%w: bad keyword at byte %d", errConnInfo, start)
		}
		i++
		skip()
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			open := i
			i++
			for {
				if i == len(s) {
					return nil, fmt.Errorf("%w: unterminated quoted value at byte %d", errConnInfo, open)
				}
				if s[i] == '\\' && i+1 < len(s) {
					v.WriteByte(s[i+1])
					i += 2
					continue
				}
				if s[i] == '\'' {
					i++
					break
				}
				v.WriteByte(s[i])
				i++
			}
		} else {
			for i < len(s) && !isConnSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		c.set(key, v.String())
	}
}

// parseConnURI parses a postgresql:// URI (see parseConnInfo).
func parseConnURI(s string) (connInfo, error) {
	_, rest, _ := strings.Cut(s, "://")
	rest, query, _ := strings.Cut(rest, "?")
	netloc, path, _ := strings.Cut(rest, "/")
	var c connInfo
	unescape := func(what, v string) (string, error) {
		u, err := url.PathUnescape(v)
		if err != nil {
			return "", fmt.Errorf("%w: bad percent-encoding in the URI's %s", errConnInfo, what)
		}
		return u, nil
	}
	if at := strings.LastIndexByte(netloc, '@'); at >= 0 {
		user, pass, hasPass := strings.Cut(netloc[:at], ":")
		netloc = netloc[at+1:]
		if user != "" {
			u, err := unescape("user", user)
			if err != nil {
				return nil, err
			}
			c.set("user", u)
		}
		if hasPass {
			p, err := unescape("password", pass)
			if err != nil {
				return nil, err
			}
			c.set("password", p)
		}
	}
	if netloc != "" {
		var hosts, ports []string
		anyPort := false
		for _, hp := range strings.Split(netloc, ",") {
			host, port := hp, ""
			if strings.HasPrefix(hp, "[") {
				end := strings.IndexByte(hp, ']')
				if end < 0 {
					return nil, fmt.Errorf("%w: unterminated [ in the URI's host", errConnInfo)
				}
				host, port = hp[1:end], strings.TrimPrefix(hp[end+1:], ":")
			} else {
				host, port, _ = strings.Cut(hp, ":")
			}
			h, err := unescape("host", host)
			if err != nil {
				return nil, err
			}
			hosts, ports = append(hosts, h), append(ports, port)
			anyPort = anyPort || port != ""
		}
		c.set("host", strings.Join(hosts, ","))
		if anyPort {
			c.set("port", strings.Join(ports, ","))
		}
	}
	if path != "" {
		db, err := unescape("database", path)
		if err != nil {
			return nil, err
		}
		c.set("dbname", db)
	}
	if query != "" {
		for _, kv := range strings.Split(query, "&") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("%w: URI parameter without \"=\"", errConnInfo)
			}
			k, err := unescape("parameters", k)
			if err != nil {
				return nil, err
			}
			if !isConnKeyword(k) {
				return nil, fmt.Errorf("%w: bad keyword in the URI's parameters", errConnInfo)
			}
			if v, err = unescape("parameters", v); err != nil {
				return nil, err
			}
			c.set(k, v)
		}
	}
	return c, nil
}

// isConnKeyword reports whether s can be a libpq keyword: letters, digits
// and underscores (libpq rejects any other as unknown).
func isConnKeyword(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || '0' <= c && c <= '9' || 'a' <= c|0x20 && c|0x20 <= 'z') {
			return false
		}
	}
	return s != ""
}

// isConnSpace is libpq's isspace for connection strings.
func isConnSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r'
}

// errPasswordInConnInfo means a primary_conninfo carries a password and
// names no password file to take it from instead.
var errPasswordInConnInfo = errors.New("primary_conninfo carries a password and names no passfile: " +
	"xlb never writes a password into primary_conninfo (the server would log it with the setting); " +
	"put it in a password file and name that with passfile")

// dropPassword removes the password from c, which must name a passfile
// then: primary_conninfo never carries a password. It returns
// errPasswordInConnInfo, and changes nothing, when c has a password and
// no passfile.
func dropPassword(c *connInfo) error {
	if _, ok := c.get("password"); !ok {
		return nil
	}
	if _, ok := c.get("passfile"); !ok {
		return errPasswordInConnInfo
	}
	c.del("password")
	return nil
}

// get returns key's value and whether it is set.
func (c connInfo) get(key string) (string, bool) {
	for _, p := range c {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// set replaces key's value where it is, or appends the pair; a key set
// twice (libpq: the last wins) keeps one pair.
func (c *connInfo) set(key, value string) {
	found := false
	out := (*c)[:0]
	for _, p := range *c {
		if p.Key == key {
			if found {
				continue
			}
			p.Value, found = value, true
		}
		out = append(out, p)
	}
	if !found {
		out = append(out, connParam{key, value})
	}
	*c = out
}

// del removes key.
func (c *connInfo) del(key string) {
	out := (*c)[:0]
	for _, p := range *c {
		if p.Key != key {
			out = append(out, p)
		}
	}
	*c = out
}

// String returns c in keyword=value form, quoting a value that is empty or
// holds whitespace, a quote or a backslash: parseConnInfo(c.String())
// gives c back.
func (c connInfo) String() string {
	parts := make([]string, len(c))
	for i, p := range c {
		parts[i] = p.Key + "=" + quoteConnValue(p.Value)
	}
	return strings.Join(parts, " ")
}

// quoteConnValue quotes a libpq connection string value when it must be.
func quoteConnValue(s string) string {
	plain := s != ""
	for i := 0; i < len(s) && plain; i++ {
		plain = !isConnSpace(s[i]) && s[i] != '\'' && s[i] != '\\'
	}
	if plain {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
