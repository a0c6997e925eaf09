package proto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

// readHex loads a golden file: hex bytes, whitespace and # comments.
func readHex(t testing.TB, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		sb.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(sb.String())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

func TestPackGolden(t *testing.T) {
	example := &Pack{}
	example.AddStr("hello", "X") // added out of order: the writer sorts
	example.AddInt("error", 0)

	all := &Pack{}
	all.set(Element{Name: "e", Type: TypeInt, Ints: []uint64{1, 2}})
	all.AddUniStr("d", "é")
	all.AddStr("c", "hi")
	all.AddData("b", []byte{0, 0xff})
	all.AddInt64("a", 0x0102030405060708)

	for _, tc := range []struct {
		file string
		pack *Pack
	}{
		{"testdata/pack_example.hex", example},
		{"testdata/pack_alltypes.hex", all},
	} {
		want := readHex(t, tc.file)
		got, err := tc.pack.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: Marshal =\n%x\nwant\n%x", tc.file, got, want)
		}
		p, err := ParsePack(want)
		if err != nil {
			t.Fatalf("%s: ParsePack: %v", tc.file, err)
		}
		if len(p.Elements) != len(tc.pack.Elements) {
			t.Fatalf("%s: %d elements, want %d", tc.file, len(p.Elements), len(tc.pack.Elements))
		}
		for _, we := range tc.pack.Elements {
			ge, ok := p.Get(we.Name, we.Type)
			if !ok {
				t.Fatalf("%s: element %q missing", tc.file, we.Name)
			}
			if ge.Len() != we.Len() || !reflect.DeepEqual(ge.Ints, we.Ints) {
				t.Errorf("%s: element %q = %+v, want %+v", tc.file, we.Name, ge, we)
			}
			for i := range we.Bytes {
				if !bytes.Equal(ge.Bytes[i], we.Bytes[i]) {
					t.Errorf("%s: element %q value %d = %x, want %x", tc.file, we.Name, i, ge.Bytes[i], we.Bytes[i])
				}
			}
		}
	}
}

func TestPackGetters(t *testing.T) {
	p, err := ParsePack(readHex(t, "testdata/pack_alltypes.hex"))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := p.Int64("A"); !ok || v != 0x0102030405060708 {
		t.Errorf("Int64(A) = %x %v (lookup must be case-insensitive)", v, ok)
	}
	if _, ok := p.Int("a"); ok {
		t.Error("Int(a) found an INT64 element; lookups are type-checked")
	}
	if s, ok := p.UniStr("d"); !ok || s != "é" {
		t.Errorf("UniStr(d) = %q %v", s, ok)
	}
	if s, ok := p.Str("c"); !ok || s != "hi" {
		t.Errorf("Str(c) = %q %v", s, ok)
	}
	if v, ok := p.Int("e"); !ok || v != 1 || !p.Bool("e") {
		t.Errorf("Int(e) = %d %v", v, ok)
	}
	if p.Bool("missing") {
		t.Error("Bool(missing) = true")
	}
}

func TestPackReject(t *testing.T) {
	good := readHex(t, "testdata/pack_example.hex")
	dup := bytes.Replace(bytes.Clone(good), []byte("hello"), []byte("ERROR"), 1)
	zeroName := bytes.Clone(good)
	copy(zeroName[4:8], []byte{0, 0, 0, 0})
	noValues := bytes.Clone(good)
	copy(noValues[17:21], []byte{0, 0, 0, 0})
	badType := bytes.Clone(good)
	copy(badType[13:17], []byte{0, 0, 0, 9})
	hugeCount := []byte{0xff, 0xff, 0xff, 0xff}
	hugeValues := bytes.Clone(good)
	copy(hugeValues[17:21], []byte{0x00, 0x04, 0x00, 0x01})
	for name, b := range map[string][]byte{
		"empty": nil, "dup": dup, "zero name": zeroName, "no values": noValues,
		"bad type": badType, "huge count": hugeCount, "huge values": hugeValues,
	} {
		if _, err := ParsePack(b); !errors.Is(err, ErrBadPack) {
			t.Errorf("%s: err = %v, want ErrBadPack", name, err)
		}
	}
	for i := 0; i < len(good); i++ {
		if _, err := ParsePack(good[:i]); !errors.Is(err, ErrBadPack) {
			t.Errorf("truncated to %d: err = %v", i, err)
		}
	}
	// Long names are truncated to 63 bytes like SoftEther does.
	long := &Pack{Elements: []Element{{Name: strings.Repeat("n", 70), Type: TypeInt, Ints: []uint64{7}}}}
	if _, err := long.Marshal(); err == nil {
		t.Error("Marshal accepted a 70-byte name")
	}
}

func TestPackTruncatesLongNames(t *testing.T) {
	name := strings.Repeat("x", 70)
	b := []byte{0, 0, 0, 1, 0, 0, 0, byte(len(name) + 1)}
	b = append(b, name...)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5)
	p, err := ParsePack(b)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := p.Int(name[:63]); !ok || v != 5 {
		t.Fatalf("truncated name lookup = %d %v", v, ok)
	}
}

func FuzzReadPack(f *testing.F) {
	f.Add(readHex(f, "testdata/pack_example.hex"))
	f.Add(readHex(f, "testdata/pack_alltypes.hex"))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePack(b)
		if err != nil {
			return
		}
		// Whatever parses must re-serialize and parse to the same PACK.
		out, err := p.Marshal()
		if err != nil {
			// Only names that differ but fold equal after truncation... cannot
			// happen: the parser rejects duplicates. Any error is a bug.
			t.Fatalf("Marshal of parsed PACK: %v", err)
		}
		q, err := ParsePack(out)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if len(q.Elements) != len(p.Elements) {
			t.Fatalf("round trip changed element count %d → %d", len(p.Elements), len(q.Elements))
		}
		for _, e := range p.Elements {
			g, ok := q.Get(e.Name, e.Type)
			if !ok || g.Len() != e.Len() {
				t.Fatalf("round trip lost element %q", e.Name)
			}
		}
	})
}

func BenchmarkPackMarshal(b *testing.B) {
	p := benchPack()
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = p.AppendTo(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkPackParse(b *testing.B) {
	raw, err := benchPack().Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParsePack(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// benchPack resembles a login PACK.
func benchPack() *Pack {
	p := &Pack{}
	p.AddStr("method", "login")
	p.AddStr("hubname", "DEFAULT")
	p.AddStr("username", "alice")
	p.AddInt("authtype", 1)
	p.AddData("secure_password", make([]byte, 20))
	p.AddStr("client_str", "acrouter User-mode Router")
	for _, n := range []string{"client_ver", "client_build", "protocol", "max_connection", "use_encrypt", "use_compress", "half_connection", "qos", "require_bridge_routing_mode", "require_monitor_mode"} {
		p.AddInt(n, 1)
	}
	p.AddData("unique_id", make([]byte, 20))
	p.AddData("pencore", make([]byte, 500))
	return p
}
