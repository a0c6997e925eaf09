package netstack

// Link is a bidirectional Ethernet frame link, for example a SoftEther hub
// session (*vpnlink.Client satisfies it; only cmd/acrouter knows both sides).
//
// Contract:
//   - ReadFrame blocks until one whole Ethernet frame (destination MAC first,
//     no FCS) is available, copies it into p and returns its length. A frame
//     longer than p is an error for that frame only (it is dropped). After
//     Close it returns an error that wraps net.ErrClosed.
//   - WriteFrames sends the frames in order. It may queue them; the caller may
//     reuse every slice as soon as it returns. A link that is temporarily down
//     (reconnecting) queues or drops frames, it never blocks for long. After
//     Close it returns an error that wraps net.ErrClosed.
//   - Both may be called from different goroutines at once; each is called by
//     at most one goroutine at a time.
type Link interface {
	ReadFrame(p []byte) (int, error)
	WriteFrames(frames [][]byte) error
}
