package netstack

import (
	"encoding/binary"
	"log/slog"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestWritePacketsOrder: senders writing through WritePackets (directly to
// the Link when it is free, through the queue when another sender holds it)
// and through enqueueFrames, against a slow Link: nothing is dropped and
// every sender's frames arrive in its order. After Close nothing is written.
func TestWritePacketsOrder(t *testing.T) {
	l := &orderLink{captureLink: newCaptureLink()}
	var ctr linkCounters
	e := newLinkEndpoint(l, tcpip.LinkAddress(fzRouterMAC), tcpip.AddrFrom4(fzRouter.As4()), 1500, 0, slog.New(slog.DiscardHandler), &ctr)
	e.start()
	const senders, per = 4, 600
	mk := func(id, seq uint32) []byte {
		f := make([]byte, 60)
		binary.BigEndian.PutUint32(f, id<<24|seq)
		return f
	}
	var wg sync.WaitGroup
	for id := range uint32(senders) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint32(0); seq < per; {
				if id == 0 && seq%7 == 0 {
					if err := e.enqueueFrames([][]byte{mk(id, seq)}); err != nil {
						t.Error(err)
						return
					}
					seq++
					continue
				}
				var pkts stack.PacketBufferList
				for k := 0; k < 3 && seq < per; k++ {
					pkts.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(mk(id, seq))}))
					seq++
				}
				n, err := e.WritePackets(pkts)
				for _, p := range pkts.AsSlice() {
					p.DecRef()
				}
				if err != nil || n != pkts.Len() {
					t.Errorf("WritePackets: %d of %d, %v", n, pkts.Len(), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	e.Close()
	<-e.writerDone
	var pkts stack.PacketBufferList
	pkts.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(mk(9, 0))}))
	if _, err := e.WritePackets(pkts); err == nil {
		t.Error("WritePackets after Close succeeded")
	}
	pkts.AsSlice()[0].DecRef()
	l.Close()
	<-e.readerDone
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.got) != senders*per || ctr.dropQueueFull.Load() != 0 {
		t.Fatalf("link got %d of %d frames, %d dropped", len(l.got), senders*per, ctr.dropQueueFull.Load())
	}
	next := make([]uint32, senders)
	for _, v := range l.got {
		id, seq := v>>24, v&0xffffff
		if id >= senders || seq != next[id] {
			t.Fatalf("sender %d: frame %d after %d: reordered", id, seq, next[id%senders])
		}
		next[id]++
	}
}
