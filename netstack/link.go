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
//     (reconnecting) queues or drops frames; an up link may make the caller
//     wait briefly for room (backpressure), never for long. After
//     Close it returns an error that wraps net.ErrClosed.
//   - Both may be called from different goroutines at once; each is called by
//     at most one goroutine at a time.
type Link interface {
	ReadFrame(p []byte) (int, error)
	WriteFrames(frames [][]byte) error
}

// BatchReader is an optional extension of Link for links that receive
// frames in bursts (*vpnlink.Client implements it). The stack then takes
// every frame of a burst in one call and coalesces consecutive TCP segments
// of a flow before its TCP layer sees them (GRO), which cuts per-segment
// work and the number of ACKs sent back.
//
// ReadFrames blocks until at least one frame is available and then returns
// n ≥ 1 frames in frames[:n] without copying them: the slices point into
// the link's buffers and stay valid only until the next ReadFrames or
// ReadFrame call. After Close it returns an error that wraps net.ErrClosed.
type BatchReader interface {
	ReadFrames(frames [][]byte) (n int, err error)
}
