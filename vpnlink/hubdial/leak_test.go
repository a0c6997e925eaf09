package hubdial

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// ownGoroutines lists the stacks of goroutines running this package's code.
func ownGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var own []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, fn := range []string{"hubdial.(*chanConn).readLoop", "hubdial.(*sshDialer).keepAlive",
			"hubdial.(*sshDialer).watch", "hubdial.(*sshDialer).track", "hubdial.(*sshDialer).open"} {
			if strings.Contains(g, fn) {
				own = append(own, g)
				break
			}
		}
	}
	return own
}

// TestSSHCloseWaits: once Close returns, none of the Dialer's goroutines
// (per-channel readers and request drains, keep-alive, connection watcher)
// is left, also with channels the caller never closed.
func TestSSHCloseWaits(t *testing.T) {
	echo := echoServer(t)
	f := newSSHFixture(t)
	d, err := New(f.config(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := d.DialContext(ctxT(t), "tcp", echo.Addr()); err != nil { // left open on purpose
			t.Fatal(err)
		}
	}
	if n := len(ownGoroutines()); n < 3+2 {
		t.Fatalf("only %d hubdial goroutines with 3 open channels: the check would not see a leak", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waits for every goroutine's wg.Done, but a goroutine may still
	// be running its last instructions after that (seen as "runnable" at
	// the end of track's closure). Goroutine exit cannot be awaited, so poll
	// briefly: a real leak stays.
	left := ownGoroutines()
	for deadline := time.Now().Add(2 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = ownGoroutines() {
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
	if len(left) > 0 {
		t.Fatalf("%d goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
