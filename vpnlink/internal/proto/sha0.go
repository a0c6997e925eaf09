package proto

import "encoding/binary"

// SHA-0 (FIPS 180, 1993). SoftEther hashes passwords with it
// (Sha0/MY_SHA0_* in src/Mayaqua/Encrypt.c, HashPassword in
// src/Cedar/Account.c). It is SHA-1 without the one-bit rotation in the
// message schedule: same initial values, round functions, constants, padding
// and big-endian output.

// SHA0Size is the length of a SHA-0 digest in bytes.
const SHA0Size = 20

const (
	sha0K0 = 0x5A827999
	sha0K1 = 0x6ED9EBA1
	sha0K2 = 0x8F1BBCDC
	sha0K3 = 0xCA62C1D6
)

// SHA0 returns the SHA-0 digest of the concatenation of parts.
func SHA0(parts ...[]byte) [SHA0Size]byte {
	h := [5]uint32{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}
	var block [64]byte
	nb := 0 // bytes in block
	var total uint64
	for _, p := range parts {
		total += uint64(len(p))
		for len(p) > 0 {
			n := copy(block[nb:], p)
			nb += n
			p = p[n:]
			if nb == 64 {
				sha0Block(&h, block[:])
				nb = 0
			}
		}
	}
	// Padding: 0x80, zeros, 64-bit big-endian bit length.
	block[nb] = 0x80
	nb++
	if nb > 56 {
		clear(block[nb:])
		sha0Block(&h, block[:])
		nb = 0
	}
	clear(block[nb:56])
	binary.BigEndian.PutUint64(block[56:], total*8)
	sha0Block(&h, block[:])
	var out [SHA0Size]byte
	for i, v := range h {
		binary.BigEndian.PutUint32(out[i*4:], v)
	}
	return out
}

func rotl(x uint32, n uint) uint32 { return x<<n | x>>(32-n) }

// sha0Block processes one 64-byte block.
func sha0Block(h *[5]uint32, p []byte) {
	var w [80]uint32
	for i := 0; i < 16; i++ {
		w[i] = binary.BigEndian.Uint32(p[i*4:])
	}
	for i := 16; i < 80; i++ {
		// SHA-1 would rotate this left by one; SHA-0 does not.
		w[i] = w[i-3] ^ w[i-8] ^ w[i-14] ^ w[i-16]
	}
	a, b, c, d, e := h[0], h[1], h[2], h[3], h[4]
	for i := 0; i < 80; i++ {
		var f, k uint32
		switch {
		case i < 20:
			f, k = b&c|^b&d, sha0K0
		case i < 40:
			f, k = b^c^d, sha0K1
		case i < 60:
			f, k = b&c|b&d|c&d, sha0K2
		default:
			f, k = b^c^d, sha0K3
		}
		t := rotl(a, 5) + f + e + w[i] + k
		a, b, c, d, e = t, a, rotl(b, 30), c, d
	}
	h[0] += a
	h[1] += b
	h[2] += c
	h[3] += d
	h[4] += e
}

// HashPassword returns SoftEther's stored password hash:
// SHA0(password bytes || ASCII-uppercased user name)
// (HashPassword in src/Cedar/Account.c).
func HashPassword(password, user string) [SHA0Size]byte {
	up := []byte(user)
	for i, c := range up {
		if c >= 'a' && c <= 'z' {
			up[i] = c - 'a' + 'A'
		}
	}
	return SHA0([]byte(password), up)
}

// SecurePassword returns the login proof SHA0(hashed || random)
// (SecurePassword in src/Cedar/Sam.c); random is the 20-byte hello challenge.
func SecurePassword(hashed [SHA0Size]byte, random []byte) [SHA0Size]byte {
	return SHA0(hashed[:], random)
}
