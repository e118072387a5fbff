package loader_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/loader"
)

// arpRequest is a broadcast ARP request from the client for target.
func arpRequest(target netip.Addr) []byte {
	b := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, clientMAC...)
	b = append(b, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1)
	b = append(b, clientMAC...)
	b = append(b, client.AsSlice()...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, target.AsSlice()...)
}

// TestLease: with Config.Lease, the node answers ARP for the VIP and takes
// new flows only while its lease runs; established flows keep going.
func TestLease(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, SkipPortCheck: true, Lease: true})
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	notOwner := func() uint64 {
		st, err := f.dp.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Total.Drops["not_owner"]
	}
	expect := func(name string, in []byte, want uint32) {
		t.Helper()
		v, out := f.run(t, in)
		if v != want {
			t.Fatalf("%s: verdict %s, want %s", name, verdictName[v], verdictName[want])
		}
		if want == xdpPass && !bytes.Equal(out, in) {
			t.Fatalf("%s: passed packet changed", name)
		}
	}

	// No lease yet: not the owner.
	expect("arp for the vip, no lease", arpRequest(vip), xdpDrop)
	expect("arp for another address", arpRequest(lbAddr), xdpPass)
	expect("syn, no lease", clientPkt(44000, 3000, syn, nil).build(), xdpDrop)
	if n := notOwner(); n != 2 {
		t.Fatalf("not_owner drops %d, want 2", n)
	}

	if err := f.dp.RenewLease(time.Hour); err != nil {
		t.Fatal(err)
	}
	if left, err := f.dp.LeaseRemaining(); err != nil || left < 59*time.Minute {
		t.Fatalf("lease remaining %v, %v", left, err)
	}
	expect("arp for the vip, leased", arpRequest(vip), xdpPass)
	forward(t, f, clientPkt(44001, 3000, syn, nil))

	if err := f.dp.DropLease(); err != nil {
		t.Fatal(err)
	}
	expect("arp for the vip, lease dropped", arpRequest(vip), xdpDrop)
	expect("new syn, lease dropped", clientPkt(44002, 3000, syn, nil).build(), xdpDrop)
	// The flow made while leased keeps forwarding.
	forward(t, f, clientPkt(44001, 3000, ack, []byte("SELECT 1")))
	// Only the owner sends RSTs: a packet without a flow, or a SYN for a
	// service without backends, is dropped silently.
	before := notOwner()
	expect("ack without flow, lease dropped", clientPkt(44003, 3000, ack, []byte("x")).build(), xdpDrop)
	expect("syn without backends, lease dropped", clientPkt(44004, 3001, syn, nil).build(), xdpDrop)
	if n := notOwner() - before; n != 2 {
		t.Fatalf("not_owner drops grew by %d, want 2", n)
	}
	if st, _ := f.dp.Stats(); st.Total.RSTs != 0 {
		t.Fatalf("%d RSTs sent without the lease", st.Total.RSTs)
	}

	// A short lease lapses by itself.
	if err := f.dp.RenewLease(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	expect("arp, short lease", arpRequest(vip), xdpPass)
	deadline := time.Now().Add(2 * time.Second)
	for {
		v, _ := f.run(t, arpRequest(vip))
		if v == xdpDrop {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a 50 ms lease still held after 2 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
