package hubdial

import (
	"io"
	"testing"
)

// BenchmarkTunnel measures round trips of 32 KiB through each kind of
// tunnel to a loopback echo server (bytes/s counts one direction).
func BenchmarkTunnel(b *testing.B) {
	for _, kind := range []Kind{Direct, HTTP, SOCKS5, SSH} {
		b.Run(string(kind), func(b *testing.B) {
			echo := echoServer(b).Addr()
			var cfg Config
			switch kind {
			case Direct:
			case HTTP:
				cfg = Config{Kind: HTTP, Proxy: newHTTPProxy(b, "", "").Addr()}
			case SOCKS5:
				cfg = Config{Kind: SOCKS5, Proxy: newSOCKSProxy(b, "", "").Addr()}
			case SSH:
				f := newSSHFixture(b)
				cfg = Config{Kind: SSH, Proxy: f.srv.Addr(), Username: "tunnel", KeyFile: f.keyFile, KnownHostsFile: f.knownHosts}
			}
			d, err := New(cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			c, err := d.DialContext(b.Context(), "tcp", echo)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 32<<10)
			back := make([]byte, len(buf))
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				errc := make(chan error, 1)
				go func() {
					_, err := c.Write(buf)
					errc <- err
				}()
				if _, err := io.ReadFull(c, back); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
