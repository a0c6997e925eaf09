package netstacktest

import (
	"errors"
	"net"
	"testing"
)

func TestPipeOrderDropClose(t *testing.T) {
	a, b := Pipe()
	frames := make([][]byte, pipeDepth+5)
	for i := range frames {
		frames[i] = []byte{byte(i), byte(i >> 8)}
	}
	if err := a.WriteFrames(frames); err != nil {
		t.Fatal(err)
	}
	if a.Dropped() != 5 {
		t.Errorf("Dropped = %d, want 5", a.Dropped())
	}
	buf := make([]byte, 64)
	for i := 0; i < pipeDepth; i++ {
		n, err := b.ReadFrame(buf)
		if err != nil || n != 2 || buf[0] != byte(i) || buf[1] != byte(i>>8) {
			t.Fatalf("frame %d: %x, %v", i, buf[:n], err)
		}
	}
	// Frames are copied: the writer may reuse its slices.
	f := []byte{1, 2, 3}
	b.WriteFrames([][]byte{f})
	f[0] = 9
	if n, err := a.ReadFrame(buf); err != nil || n != 3 || buf[0] != 1 {
		t.Fatalf("read %x, %v", buf[:n], err)
	}
	b.WriteFrames([][]byte{make([]byte, 100)})
	if _, err := a.ReadFrame(make([]byte, 10)); err == nil {
		t.Error("oversized frame for the buffer was not an error")
	}
	if err := a.WriteFrames([][]byte{make([]byte, maxFrame+1)}); err == nil {
		t.Error("frame over the maximum accepted")
	}
	b.Close()
	b.Close()
	if _, err := a.ReadFrame(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if err := a.WriteFrames(frames[:1]); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
}
