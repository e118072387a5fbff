package vip

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// tcpdumpVRRP matches the VRRP part of `tcpdump -v -n` output, which
// has ", (bad vrrp cksum XXXX)" before the addresses when the checksum
// over the IPv4 pseudo-header does not verify.
var tcpdumpVRRP = regexp.MustCompile(`(\S+) > (\S+): VRRPv(\d), Advertisement, vrid (\d+), prio (\d+), intvl (\d+)cs, length (\d+)(.*), addrs: (\S+)`)

// TestTcpdumpDecodes has tcpdump, in the client's namespace, decode an
// instance's advertisements as VRRPv3 with a good checksum. A message
// with a wrong checksum, sent from lb2, shows tcpdump does check.
func TestTcpdumpDecodes(t *testing.T) {
	t.Parallel()
	requireTool(t, "tcpdump", "tcpdump")
	l := newVIPLab(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.Command("tcpdump", "-v", "-n", "-l", "-i", lab.HostIf, "ip", "proto", "112")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.client.NS.Start(cmd); err != nil {
		t.Fatalf("starting tcpdump: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
				io.Copy(io.Discard, stderr)
				return
			}
		}
	}()
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case <-listening:
	case <-ctx.Done():
		t.Fatal("tcpdump did not start listening")
	}

	start(t, l.lb1, Config{VRID: testVRID, Priority: 200, Preempt: true, VIP: testVIP})
	// A priority-77 advertisement from lb2 with its checksum off by one.
	bad, err := (&Advertisement{VRID: testVRID, Priority: 77, Interval: time.Second, Addresses: []netip.Addr{lab.VIP}}).Marshal(l.lb2.Addr.Addr(), MulticastGroup)
	if err != nil {
		t.Fatal(err)
	}
	bad[7]++
	err = l.lb2.NS.Do(func() error {
		ifi, err := net.InterfaceByName(lab.HostIf)
		if err != nil {
			return err
		}
		c, err := listenVRRP(ifi, false)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.WriteTo(bad, Header{Src: l.lb2.Addr.Addr(), Dst: MulticastGroup, TTL: TTL})
	})
	if err != nil {
		t.Fatal(err)
	}

	var good, flagged int
	var ipLine string // -v prints the IPv4 header on the line before
	for good < 3 || flagged < 1 {
		var line string
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("tcpdump ended after %d good and %d bad advertisements", good, flagged)
			}
			line = l
		case <-ctx.Done():
			t.Fatalf("got %d good and %d bad advertisements from tcpdump within 10s", good, flagged)
		}
		m := tcpdumpVRRP.FindStringSubmatch(line)
		if m == nil {
			ipLine = line
			continue
		}
		t.Log(strings.TrimSpace(line))
		src, ver, vrid, prio, intvl, length, rest, addrs := m[1], m[3], m[4], m[5], m[6], m[7], m[8], m[9]
		if ver != "3" || vrid != "51" || length != "12" || addrs != lab.VIP.String() || m[2] != MulticastGroup.String() {
			t.Errorf("tcpdump decoded %q, want VRRPv3 vrid 51 length 12 to 224.0.0.18 for %v", line, lab.VIP)
		}
		switch src {
		case l.lb1.Addr.Addr().String():
			if prio != "200" || intvl != "5" || strings.Contains(rest, "bad vrrp cksum") {
				t.Errorf("tcpdump decoded %q, want prio 200, intvl 5cs and a good checksum", line)
			}
			if !strings.Contains(ipLine, "ttl 255,") || !strings.Contains(ipLine, "proto VRRP (112)") {
				t.Errorf("tcpdump decoded the IPv4 header as %q, want ttl 255 and proto VRRP (112)", ipLine)
			}
			good++
		case l.lb2.Addr.Addr().String():
			if prio != "77" || !strings.Contains(rest, "bad vrrp cksum") {
				t.Errorf("tcpdump decoded %q, want prio 77 flagged with a bad checksum", line)
			}
			flagged++
		}
	}
}
