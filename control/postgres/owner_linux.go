package postgres

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// asOwner runs f on an OS thread of its own whose filesystem identity is
// the data directory's owner: fsuid and fsgid the owner's, the owner's
// groups, and (the kernel drops them with a non-zero fsuid) none of root's
// file capabilities. Every path f opens, creates, renames or removes is
// then checked against the owner's rights, not root's, so a symlink or a
// directory the owner planted leads nowhere the owner could not write or
// read itself. The thread is never handed back to the runtime: it ends
// with the goroutine. When rejoin runs as the owner already, asOwner just
// calls f.
func (r *rejoiner) asOwner(f func() error) error {
	if r.cred == nil {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the goroutine exits locked, and the runtime
		// terminates the thread with its changed identity.
		runtime.LockOSThread()
		if err := r.becomeOwner(); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// becomeOwner gives the calling thread (locked) the owner's filesystem
// identity and groups, and checks that it took.
func (r *rejoiner) becomeOwner() error {
	groups := make([]int, len(r.cred.Groups))
	for i, g := range r.cred.Groups {
		groups[i] = int(g)
	}
	// Raw syscalls: they change this thread only (syscall.Setgroups would
	// change every thread of the process).
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("taking the groups of the data directory's owner: %w", err)
	}
	if err := unix.Setfsgid(r.gid); err != nil {
		return fmt.Errorf("taking the data directory owner's group: %w", err)
	}
	if err := unix.Setfsuid(r.uid); err != nil {
		return fmt.Errorf("taking the data directory owner's identity: %w", err)
	}
	// setfsuid reports the previous value, never failure: read it back.
	uid, _ := unix.SetfsuidRetUid(-1)
	gid, _ := unix.SetfsgidRetGid(-1)
	if uid != r.uid || gid != r.gid {
		return fmt.Errorf("taking the data directory owner's identity: fsuid %d fsgid %d, want %d %d", uid, gid, r.uid, r.gid)
	}
	return nil
}
