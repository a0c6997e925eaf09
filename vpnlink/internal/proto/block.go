package proto

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Data-phase records (ConnectionSend/ConnectionReceive, SendKeepAlive in
// src/Cedar/Connection.c; constants in src/Cedar/Cedar.h):
//
//	record     := batch | keepalive
//	batch      := u32 N (N ≠ 0xFFFFFFFF), N × { u32 size, size bytes }
//	keepalive  := u32 0xFFFFFFFF, u32 len, len bytes of padding
const (
	// MaxPacketSize (MAX_PACKET_SIZE): larger blocks are dropped.
	MaxPacketSize = 1600
	// MaxBlockSize: a size field above 2×MAX_PACKET_SIZE makes the
	// receiver disconnect (ConnectionReceive, mode 1).
	MaxBlockSize = 2 * MaxPacketSize
	// MaxKeepAliveSize (MAX_KEEPALIVE_SIZE): a longer keep-alive makes the
	// receiver disconnect; senders pad with rand() % 512 bytes.
	MaxKeepAliveSize = 512
	// KeepAliveMagic (KEEP_ALIVE_MAGIC) replaces the block count.
	KeepAliveMagic = 0xFFFFFFFF
)

// ErrBadRecord reports a data-phase record that the SoftEther server would
// answer by disconnecting.
var ErrBadRecord = errors.New("malformed data record")

// RecordKind says what RecordReader.Next returned.
type RecordKind int

const (
	// KindFrame: one Ethernet frame was copied into dst.
	KindFrame RecordKind = iota
	// KindKeepAlive: a keep-alive record was consumed.
	KindKeepAlive
	// KindEmptyBatch: a batch header with N = 0 was consumed.
	KindEmptyBatch
	// KindEmptyBlock: a zero-size block was skipped.
	KindEmptyBlock
	// KindOversize: a block of MaxPacketSize+1…MaxBlockSize bytes (or
	// larger than dst) was skipped, as the server does.
	KindOversize
)

// RecordReader parses the data-phase byte stream. It never allocates: frames
// are copied into the caller's buffer, padding is discarded. Any record may
// be split across reads. It is not safe for concurrent use.
type RecordReader struct {
	r         *bufio.Reader
	remaining uint32 // blocks left in the current batch
	hdr       [4]byte
}

// NewRecordReader reads records from r. Pass the reader that parsed the
// handshake: it may already buffer data-phase bytes.
func NewRecordReader(r *bufio.Reader) *RecordReader { return &RecordReader{r: r} }

// InBatch reports whether the reader stopped in the middle of a batch.
func (rr *RecordReader) InBatch() bool { return rr.remaining > 0 }

func (rr *RecordReader) u32(what string, boundary bool) (uint32, error) {
	if _, err := io.ReadFull(rr.r, rr.hdr[:]); err != nil {
		if err == io.EOF && boundary {
			return 0, io.EOF
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return 0, fmt.Errorf("%w: stream truncated in %s", ErrBadRecord, what)
		}
		return 0, err
	}
	return binary.BigEndian.Uint32(rr.hdr[:]), nil
}

// Next consumes one record or one block of a batch. For KindFrame it
// returns the frame length n (the frame is dst[:n]). A clean end of stream
// between records returns io.EOF; a stream cut inside a record, a block size
// over MaxBlockSize or a keep-alive over MaxKeepAliveSize return an error
// wrapping ErrBadRecord. Read errors are returned unchanged.
func (rr *RecordReader) Next(dst []byte) (kind RecordKind, n int, err error) {
	if rr.remaining == 0 {
		cnt, err := rr.u32("record header", true)
		if err != nil {
			return 0, 0, err
		}
		switch cnt {
		case KeepAliveMagic:
			l, err := rr.u32("keep-alive length", false)
			if err != nil {
				return 0, 0, err
			}
			if l > MaxKeepAliveSize {
				return 0, 0, fmt.Errorf("%w: keep-alive of %d bytes (limit %d)", ErrBadRecord, l, MaxKeepAliveSize)
			}
			if _, err := rr.r.Discard(int(l)); err != nil {
				return 0, 0, rr.truncated("keep-alive", err)
			}
			return KindKeepAlive, 0, nil
		case 0:
			return KindEmptyBatch, 0, nil
		}
		rr.remaining = cnt
	}
	size, err := rr.u32("block size", false)
	if err != nil {
		return 0, 0, err
	}
	rr.remaining--
	switch {
	case size > MaxBlockSize:
		return 0, 0, fmt.Errorf("%w: data block of %d bytes (limit %d)", ErrBadRecord, size, MaxBlockSize)
	case size == 0:
		return KindEmptyBlock, 0, nil
	case size > MaxPacketSize || int(size) > len(dst):
		if _, err := rr.r.Discard(int(size)); err != nil {
			return 0, 0, rr.truncated("data block", err)
		}
		return KindOversize, int(size), nil
	}
	if _, err := io.ReadFull(rr.r, dst[:size]); err != nil {
		return 0, 0, rr.truncated("data block", err)
	}
	return KindFrame, int(size), nil
}

// Ready reports whether the next call to Next can complete from bytes the
// bufio.Reader already holds, without reading from the connection. A reader
// handing frames on in batches uses it to pass a batch on before it would
// block. (Peek of at most Buffered bytes never reads.)
func (rr *RecordReader) Ready() bool {
	avail := rr.r.Buffered()
	hdr := 0
	if rr.remaining == 0 {
		if avail < 4 {
			return false
		}
		b, _ := rr.r.Peek(4)
		switch binary.BigEndian.Uint32(b) {
		case KeepAliveMagic:
			if avail < 8 {
				return false
			}
			b, _ = rr.r.Peek(8)
			l := binary.BigEndian.Uint32(b[4:])
			return l > MaxKeepAliveSize || avail >= 8+int(l)
		case 0:
			return true
		}
		hdr = 4
	}
	if avail < hdr+4 {
		return false
	}
	b, _ := rr.r.Peek(hdr + 4)
	size := binary.BigEndian.Uint32(b[hdr:])
	return size > MaxBlockSize || avail >= hdr+4+int(size)
}

func (rr *RecordReader) truncated(what string, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: stream truncated in %s", ErrBadRecord, what)
	}
	return err
}

// AppendBlock appends one block (u32 size, frame) to dst. A batch is a u32
// count followed by blocks; see PutBatchCount.
func AppendBlock(dst, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
	return append(dst, frame...)
}

// PutBatchCount writes the block count into the first 4 bytes of a batch
// buffer that was started with 4 placeholder bytes.
func PutBatchCount(batch []byte, n int) { binary.BigEndian.PutUint32(batch, uint32(n)) }

// AppendBatch appends one batch record carrying frames to dst.
func AppendBatch(dst []byte, frames [][]byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frames)))
	for _, f := range frames {
		dst = AppendBlock(dst, f)
	}
	return dst
}

// AppendKeepAlive appends a keep-alive record with the given padding
// (len(pad) must be ≤ MaxKeepAliveSize).
func AppendKeepAlive(dst, pad []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, KeepAliveMagic)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(pad)))
	return append(dst, pad...)
}
