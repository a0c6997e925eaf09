package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// PACK serialization (WritePack/ReadPack, WriteElement/ReadElement,
// WriteValue/ReadValue in src/Mayaqua/Pack.c; ReadBufStr/WriteBufStr in
// src/Mayaqua/Memory.c). All integers are big-endian:
//
//	PACK    := u32 count, element × count
//	element := u32 L, (L-1) name bytes, u32 type, u32 n, value × n
//	value   := INT u32 | DATA u32 size, bytes | STR u32 len, bytes |
//	           UNISTR u32 size, UTF-8 bytes incl. one trailing NUL | INT64 u64

// ValueType is the type of every value of one PACK element.
type ValueType uint32

// Value types (VALUE_* in src/Mayaqua/Pack.h).
const (
	TypeInt    ValueType = 0
	TypeData   ValueType = 1
	TypeStr    ValueType = 2
	TypeUniStr ValueType = 3
	TypeInt64  ValueType = 4
)

// Limits of the 64-bit build (src/Mayaqua/Pack.h).
const (
	MaxElementNameLen = 63
	MaxElements       = 262144
	MaxValues         = 262144
	MaxValueSize      = 384 << 20
)

// ErrBadPack reports a PACK that SoftEther would refuse to parse.
var ErrBadPack = errors.New("malformed PACK")

// Element is one named, typed array of values.
// Ints holds INT and INT64 values; Bytes holds DATA, STR and UNISTR values
// (UNISTR without its trailing NUL).
type Element struct {
	Name  string
	Type  ValueType
	Ints  []uint64
	Bytes [][]byte
}

// Len returns the number of values.
func (e *Element) Len() int {
	if e.Type == TypeInt || e.Type == TypeInt64 {
		return len(e.Ints)
	}
	return len(e.Bytes)
}

// Pack is a SoftEther PACK: a set of elements with case-insensitively unique
// names. The zero value is an empty PACK.
type Pack struct {
	Elements []Element
}

func (p *Pack) find(name string) int {
	for i := range p.Elements {
		if equalFoldASCII(p.Elements[i].Name, name) {
			return i
		}
	}
	return -1
}

func (p *Pack) set(e Element) {
	if i := p.find(e.Name); i >= 0 {
		p.Elements[i] = e
		return
	}
	p.Elements = append(p.Elements, e)
}

// AddInt sets INT name = v (replacing any element of that name).
func (p *Pack) AddInt(name string, v uint32) {
	p.set(Element{Name: name, Type: TypeInt, Ints: []uint64{uint64(v)}})
}

// AddBool sets INT name = 0/1.
func (p *Pack) AddBool(name string, v bool) {
	var i uint32
	if v {
		i = 1
	}
	p.AddInt(name, i)
}

// AddInt64 sets INT64 name = v.
func (p *Pack) AddInt64(name string, v uint64) {
	p.set(Element{Name: name, Type: TypeInt64, Ints: []uint64{v}})
}

// AddData sets DATA name = v (not copied).
func (p *Pack) AddData(name string, v []byte) {
	p.set(Element{Name: name, Type: TypeData, Bytes: [][]byte{v}})
}

// AddStr sets STR name = v.
func (p *Pack) AddStr(name, v string) {
	p.set(Element{Name: name, Type: TypeStr, Bytes: [][]byte{[]byte(v)}})
}

// AddUniStr sets UNISTR name = v.
func (p *Pack) AddUniStr(name, v string) {
	p.set(Element{Name: name, Type: TypeUniStr, Bytes: [][]byte{[]byte(v)}})
}

// Get returns the element called name (case-insensitive) if it has type t
// and at least one value. Like PackGetInt & co. in Pack.c, an element of
// another type counts as absent.
func (p *Pack) Get(name string, t ValueType) (*Element, bool) {
	i := p.find(name)
	if i < 0 || p.Elements[i].Type != t || p.Elements[i].Len() == 0 {
		return nil, false
	}
	return &p.Elements[i], true
}

// Int returns the first value of INT name.
func (p *Pack) Int(name string) (uint32, bool) {
	e, ok := p.Get(name, TypeInt)
	if !ok {
		return 0, false
	}
	return uint32(e.Ints[0]), true
}

// Bool reports whether INT name exists and is non-zero.
func (p *Pack) Bool(name string) bool {
	v, _ := p.Int(name)
	return v != 0
}

// Int64 returns the first value of INT64 name.
func (p *Pack) Int64(name string) (uint64, bool) {
	e, ok := p.Get(name, TypeInt64)
	if !ok {
		return 0, false
	}
	return e.Ints[0], true
}

// Data returns the first value of DATA name (aliasing the PACK's memory).
func (p *Pack) Data(name string) ([]byte, bool) {
	e, ok := p.Get(name, TypeData)
	if !ok {
		return nil, false
	}
	return e.Bytes[0], true
}

// Str returns the first value of STR name.
func (p *Pack) Str(name string) (string, bool) {
	e, ok := p.Get(name, TypeStr)
	if !ok {
		return "", false
	}
	return string(e.Bytes[0]), true
}

// UniStr returns the first value of UNISTR name.
func (p *Pack) UniStr(name string) (string, bool) {
	e, ok := p.Get(name, TypeUniStr)
	if !ok {
		return "", false
	}
	return string(e.Bytes[0]), true
}

// AppendTo appends the serialized PACK to dst. Elements are written in
// case-insensitive name order, as SoftEther does (its element list is
// sorted). It fails on an element without values, an empty or duplicate
// name, or an unknown type.
func (p *Pack) AppendTo(dst []byte) ([]byte, error) {
	order := make([]int, len(p.Elements))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return strings.Compare(lowerASCII(p.Elements[a].Name), lowerASCII(p.Elements[b].Name))
	})
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.Elements)))
	for k, i := range order {
		e := &p.Elements[i]
		if e.Name == "" || len(e.Name) > MaxElementNameLen {
			return dst, fmt.Errorf("%w: element name %q: length must be 1..%d", ErrBadPack, e.Name, MaxElementNameLen)
		}
		if k > 0 && equalFoldASCII(p.Elements[order[k-1]].Name, e.Name) {
			return dst, fmt.Errorf("%w: duplicate element name %q", ErrBadPack, e.Name)
		}
		if e.Len() == 0 {
			return dst, fmt.Errorf("%w: element %q has no values", ErrBadPack, e.Name)
		}
		// The "+1 quirk": the length field counts a NUL that is not sent.
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Name)+1))
		dst = append(dst, e.Name...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(e.Type))
		dst = binary.BigEndian.AppendUint32(dst, uint32(e.Len()))
		switch e.Type {
		case TypeInt:
			for _, v := range e.Ints {
				dst = binary.BigEndian.AppendUint32(dst, uint32(v))
			}
		case TypeInt64:
			for _, v := range e.Ints {
				dst = binary.BigEndian.AppendUint64(dst, v)
			}
		case TypeData, TypeStr:
			for _, v := range e.Bytes {
				dst = binary.BigEndian.AppendUint32(dst, uint32(len(v)))
				dst = append(dst, v...)
			}
		case TypeUniStr:
			for _, v := range e.Bytes {
				dst = binary.BigEndian.AppendUint32(dst, uint32(len(v)+1))
				dst = append(dst, v...)
				dst = append(dst, 0)
			}
		default:
			return dst, fmt.Errorf("%w: element %q has unknown type %d", ErrBadPack, e.Name, e.Type)
		}
	}
	return dst, nil
}

// Marshal serializes the PACK into a new slice.
func (p *Pack) Marshal() ([]byte, error) { return p.AppendTo(nil) }

type packReader struct {
	b   []byte
	off int
}

func (r *packReader) u32() (uint32, bool) {
	if len(r.b)-r.off < 4 {
		return 0, false
	}
	v := binary.BigEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v, true
}

func (r *packReader) bytes(n uint32) ([]byte, bool) {
	if uint64(len(r.b)-r.off) < uint64(n) {
		return nil, false
	}
	v := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return v, true
}

// ParsePack parses a serialized PACK. Byte values alias b. Like ReadPack in
// src/Mayaqua/Pack.c it rejects a zero name length (and, stricter, an empty
// name), an element without
// values, duplicate names (case-insensitive), counts over the limits and
// truncated input; names longer than 63 bytes are truncated; bytes after the
// PACK are ignored. Memory use is bounded by len(b).
func ParsePack(b []byte) (*Pack, error) {
	r := &packReader{b: b}
	n, ok := r.u32()
	if !ok {
		return nil, fmt.Errorf("%w: truncated element count", ErrBadPack)
	}
	if n > MaxElements {
		return nil, fmt.Errorf("%w: %d elements (limit %d)", ErrBadPack, n, MaxElements)
	}
	// An element needs at least 16 bytes; never preallocate beyond the input.
	p := &Pack{Elements: make([]Element, 0, min(int(n), len(b)/16))}
	seen := make(map[string]struct{}, cap(p.Elements))
	for i := uint32(0); i < n; i++ {
		var e Element
		l, ok := r.u32()
		if !ok {
			return nil, fmt.Errorf("%w: element %d: truncated name", ErrBadPack, i)
		}
		if l == 0 {
			return nil, fmt.Errorf("%w: element %d: zero name length", ErrBadPack, i)
		}
		if l == 1 {
			// An empty name (length field 1, no bytes). SoftEther never
			// writes one, and Marshal refuses it; reject it here too so
			// that every parsed PACK can be written back (FuzzReadPack).
			return nil, fmt.Errorf("%w: element %d: empty name", ErrBadPack, i)
		}
		name, ok := r.bytes(l - 1)
		if !ok {
			return nil, fmt.Errorf("%w: element %d: truncated name", ErrBadPack, i)
		}
		if len(name) > MaxElementNameLen {
			name = name[:MaxElementNameLen]
		}
		e.Name = string(name)
		t, ok1 := r.u32()
		nv, ok2 := r.u32()
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: element %q: truncated header", ErrBadPack, e.Name)
		}
		e.Type = ValueType(t)
		if nv == 0 || nv > MaxValues {
			return nil, fmt.Errorf("%w: element %q: %d values", ErrBadPack, e.Name, nv)
		}
		switch e.Type {
		case TypeInt, TypeInt64:
			w := uint32(4)
			if e.Type == TypeInt64 {
				w = 8
			}
			raw, ok := r.bytes(nv * w) // nv ≤ 2^18, no overflow
			if !ok {
				return nil, fmt.Errorf("%w: element %q: truncated values", ErrBadPack, e.Name)
			}
			e.Ints = make([]uint64, nv)
			for j := range e.Ints {
				if w == 4 {
					e.Ints[j] = uint64(binary.BigEndian.Uint32(raw[j*4:]))
				} else {
					e.Ints[j] = binary.BigEndian.Uint64(raw[j*8:])
				}
			}
		case TypeData, TypeStr, TypeUniStr:
			e.Bytes = make([][]byte, 0, min(int(nv), (len(b)-r.off)/4+1))
			for j := uint32(0); j < nv; j++ {
				sz, ok := r.u32()
				if !ok {
					return nil, fmt.Errorf("%w: element %q: truncated value", ErrBadPack, e.Name)
				}
				if sz > MaxValueSize {
					return nil, fmt.Errorf("%w: element %q: value of %d bytes", ErrBadPack, e.Name, sz)
				}
				v, ok := r.bytes(sz)
				if !ok {
					return nil, fmt.Errorf("%w: element %q: truncated value", ErrBadPack, e.Name)
				}
				if e.Type == TypeUniStr && len(v) > 0 && v[len(v)-1] == 0 {
					v = v[:len(v)-1]
				}
				e.Bytes = append(e.Bytes, v)
			}
		default:
			return nil, fmt.Errorf("%w: element %q: unknown type %d", ErrBadPack, e.Name, t)
		}
		key := lowerASCII(e.Name)
		if _, dup := seen[key]; dup {
			return nil, fmt.Errorf("%w: duplicate element %q", ErrBadPack, e.Name)
		}
		seen[key] = struct{}{}
		p.Elements = append(p.Elements, e)
	}
	return p, nil
}

// SoftEther compares element names with StrCmpi, which folds ASCII only.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x >= 'A' && x <= 'Z' {
			x += 'a' - 'A'
		}
		if y >= 'A' && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
