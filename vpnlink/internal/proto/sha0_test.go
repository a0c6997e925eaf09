package proto

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func TestSHA0Vectors(t *testing.T) {
	million := bytes.Repeat([]byte("a"), 1000000)
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"abc", []byte("abc"), "0164b8a914cd2a5e74c4f7ff082c4d97f1edf880"},
		{"448bit", []byte("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), "d2516ee1acfa5baf33dfc1c471e438449ef134c8"},
		{"million-a", million, "3232affa48628a26653b5aaa44541fd90d690603"},
		{"empty", nil, "f96cea198ad1dd5617ac084a3d92c6107708c0ef"},
		{"secretALICE", []byte("secretALICE"), "0e782dacdb78918d73007999da81bc408906d451"},
		{"passwordTEST", []byte("passwordTEST"), "94482916611d020e048d73da42bb3aa9813ca8d2"},
	} {
		got := SHA0(tc.in)
		if hex.EncodeToString(got[:]) != tc.want {
			t.Errorf("%s: SHA0 = %x, want %s", tc.name, got, tc.want)
		}
	}
}

// Split input must give the same digest as one piece (exercises block
// boundaries in the streaming loop).
func TestSHA0Parts(t *testing.T) {
	in := bytes.Repeat([]byte("0123456789"), 30)
	want := SHA0(in)
	for cut := 0; cut <= len(in); cut += 7 {
		if got := SHA0(in[:cut], in[cut:]); got != want {
			t.Fatalf("cut %d: %x != %x", cut, got, want)
		}
	}
}

func TestPasswordHashing(t *testing.T) {
	h := HashPassword("secret", "alice")
	if hex.EncodeToString(h[:]) != "0e782dacdb78918d73007999da81bc408906d451" {
		t.Fatalf("HashPassword(secret, alice) = %x", h)
	}
	if HashPassword("secret", "aLiCe") != h {
		t.Fatal("user name must be upper-cased")
	}
	random := make([]byte, 20)
	for i := range random {
		random[i] = byte(i)
	}
	sp := SecurePassword(h, random)
	if hex.EncodeToString(sp[:]) != "1394b82845bfb7a2711c4963f2b62978cb2c6ce3" {
		t.Fatalf("SecurePassword = %x", sp)
	}
	// Only ASCII letters are upper-cased.
	if HashPassword("x", "ä") != SHA0([]byte("x"), []byte("ä")) {
		t.Fatal("non-ASCII bytes must stay unchanged")
	}
}

func BenchmarkSHA0(b *testing.B) {
	in := make([]byte, 40)
	b.SetBytes(40)
	for b.Loop() {
		SHA0(in)
	}
}
