package proto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func TestRecordRoundTrip(t *testing.T) {
	f1 := bytes.Repeat([]byte{1}, 42) // ARP-sized
	f2 := bytes.Repeat([]byte{2}, 1514)
	f3 := bytes.Repeat([]byte{3}, MaxPacketSize)
	var stream []byte
	stream = AppendKeepAlive(stream, make([]byte, 511))
	stream = AppendBatch(stream, [][]byte{f1, f2})
	stream = AppendBatch(stream, nil) // N = 0
	// A batch built the way the client writer does it.
	b := make([]byte, 4)
	b = AppendBlock(b, f3)
	PutBatchCount(b, 1)
	stream = append(stream, b...)
	stream = AppendKeepAlive(stream, nil)

	want := []struct {
		kind  RecordKind
		frame []byte
	}{{KindKeepAlive, nil}, {KindFrame, f1}, {KindFrame, f2}, {KindEmptyBatch, nil}, {KindFrame, f3}, {KindKeepAlive, nil}}
	// One byte per read: every record is split.
	rr := NewRecordReader(bufio.NewReader(iotest.OneByteReader(bytes.NewReader(stream))))
	buf := make([]byte, MaxPacketSize)
	for i, w := range want {
		kind, n, err := rr.Next(buf)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if kind != w.kind || (kind == KindFrame && !bytes.Equal(buf[:n], w.frame)) {
			t.Fatalf("record %d: kind %d len %d, want kind %d len %d", i, kind, n, w.kind, len(w.frame))
		}
	}
	if _, _, err := rr.Next(buf); err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
}

func TestRecordLimits(t *testing.T) {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name   string
		stream []byte
		kinds  []RecordKind // before the final result
		bad    bool         // final error wraps ErrBadRecord (else io.EOF)
	}{
		{"keepalive 512 ok", cat(u32(KeepAliveMagic), u32(512), make([]byte, 512)), []RecordKind{KindKeepAlive}, false},
		{"keepalive 513", cat(u32(KeepAliveMagic), u32(513), make([]byte, 513)), nil, true},
		{"block 3200 skipped", cat(u32(1), u32(3200), make([]byte, 3200)), []RecordKind{KindOversize}, false},
		{"block 1601 skipped", cat(u32(1), u32(1601), make([]byte, 1601)), []RecordKind{KindOversize}, false},
		{"block 3201", cat(u32(1), u32(3201), make([]byte, 3201)), nil, true},
		{"zero block", cat(u32(2), u32(0), u32(1), []byte{9}), []RecordKind{KindEmptyBlock, KindFrame}, false},
		{"truncated count", []byte{0, 0}, nil, true},
		{"truncated block", cat(u32(1), u32(10), []byte{1, 2}), nil, true},
		{"missing block", cat(u32(2), u32(1), []byte{1}), []RecordKind{KindFrame}, true},
		{"truncated keepalive", cat(u32(KeepAliveMagic), u32(10), []byte{1}), nil, true},
		{"huge count then cut", cat(u32(0xFFFFFFFE)), nil, true},
		{"http garbage", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), nil, true},
	} {
		rr := NewRecordReader(bufio.NewReader(bytes.NewReader(tc.stream)))
		buf := make([]byte, MaxPacketSize)
		for i, k := range tc.kinds {
			kind, _, err := rr.Next(buf)
			if err != nil || kind != k {
				t.Fatalf("%s: record %d = %d, %v; want kind %d", tc.name, i, kind, err, k)
			}
		}
		_, _, err := rr.Next(buf)
		if tc.bad != errors.Is(err, ErrBadRecord) || (!tc.bad && err != io.EOF) {
			t.Errorf("%s: final err = %v, want bad=%v", tc.name, err, tc.bad)
		}
	}
}

// A frame larger than the caller's buffer is skipped, not truncated.
func TestRecordSmallBuffer(t *testing.T) {
	stream := AppendBatch(nil, [][]byte{make([]byte, 100), {7}})
	rr := NewRecordReader(bufio.NewReader(bytes.NewReader(stream)))
	buf := make([]byte, 50)
	if kind, n, err := rr.Next(buf); err != nil || kind != KindOversize || n != 100 {
		t.Fatalf("got %d %d %v", kind, n, err)
	}
	if kind, n, err := rr.Next(buf); err != nil || kind != KindFrame || n != 1 || buf[0] != 7 {
		t.Fatalf("got %d %d %v", kind, n, err)
	}
}

func FuzzReadRecords(f *testing.F) {
	f.Add(AppendBatch(AppendKeepAlive(nil, []byte("pad")), [][]byte{make([]byte, 60), make([]byte, 1514)}))
	f.Add([]byte("HTTP/1.1 200 OK\r\n"))
	f.Add(append(u32(3), u32(0)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		rr := NewRecordReader(bufio.NewReader(bytes.NewReader(b)))
		buf := make([]byte, MaxPacketSize)
		consumed := 0
		// Every call consumes ≥ 4 bytes, so len(b)/4+1 calls must reach the end.
		for i := 0; i <= len(b)/4+1; i++ {
			kind, n, err := rr.Next(buf)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrBadRecord) {
					t.Fatalf("unexpected error type: %v", err)
				}
				return
			}
			if kind == KindFrame && (n < 1 || n > MaxPacketSize) {
				t.Fatalf("frame length %d", n)
			}
			consumed++
		}
		t.Fatalf("reader did not terminate after %d records on %d bytes", consumed, len(b))
	})
}

func BenchmarkBlockEncode(b *testing.B) {
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = make([]byte, 1514)
	}
	buf := make([]byte, 0, 64*1520)
	b.SetBytes(64 * 1514)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendBatch(buf[:0], frames)
	}
}

func BenchmarkBlockDecode(b *testing.B) {
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = make([]byte, 1514)
	}
	stream := AppendBatch(nil, frames)
	r := bytes.NewReader(stream)
	br := bufio.NewReaderSize(r, 64<<10)
	buf := make([]byte, MaxPacketSize)
	b.SetBytes(64 * 1514)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(stream)
		br.Reset(r)
		rr := RecordReader{r: br}
		for range 64 {
			if _, _, err := rr.Next(buf); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// gateReader returns its data in one read, then errWouldBlock: a connection
// with nothing more to read yet.
type gateReader struct{ data []byte }

var errWouldBlock = errors.New("would block")

func (g *gateReader) Read(p []byte) (int, error) {
	if len(g.data) == 0 {
		return 0, errWouldBlock
	}
	n := copy(p, g.data)
	g.data = g.data[n:]
	return n, nil
}

// TestRecordReady: for every cut of a stream, Ready is true exactly for the
// records (blocks) that lie entirely before the cut, and Next then never
// reads from the connection.
func TestRecordReady(t *testing.T) {
	f1, f2 := bytes.Repeat([]byte{1}, 42), bytes.Repeat([]byte{2}, 1514)
	var stream []byte
	var ends []int // where each unit that Next consumes ends
	add := func(b []byte) { stream = append(stream, b...); ends = append(ends, len(stream)) }
	add(AppendKeepAlive(nil, make([]byte, 100)))
	add(append(u32(2), AppendBlock(nil, f1)...)) // batch header + first block
	add(AppendBlock(nil, f2))
	add(u32(0)) // empty batch
	add(append(u32(1), AppendBlock(nil, f2)...))
	add(AppendKeepAlive(nil, nil))
	buf := make([]byte, MaxPacketSize)
	for cut := 0; cut <= len(stream); cut++ {
		br := bufio.NewReaderSize(&gateReader{data: stream[:cut]}, 1<<16)
		br.Peek(1) // fill
		rr := NewRecordReader(br)
		got := 0
		for rr.Ready() {
			if _, _, err := rr.Next(buf); err != nil {
				t.Fatalf("cut %d: Next after Ready: %v", cut, err)
			}
			got++
		}
		want := 0
		for _, e := range ends {
			if e <= cut {
				want++
			}
		}
		if got != want {
			t.Fatalf("cut %d: %d units ready, want %d", cut, got, want)
		}
	}
	// Records that Next rejects at once count as ready (the error is
	// immediate, not a wait).
	for _, s := range [][]byte{
		append(u32(1), u32(MaxBlockSize+1)...),
		append(u32(KeepAliveMagic), u32(MaxKeepAliveSize+1)...),
	} {
		br := bufio.NewReader(bytes.NewReader(s))
		br.Peek(1)
		rr := NewRecordReader(br)
		if !rr.Ready() {
			t.Errorf("% x: not ready", s)
		}
		if _, _, err := rr.Next(buf); !errors.Is(err, ErrBadRecord) {
			t.Errorf("% x: %v", s, err)
		}
	}
}
