package wire

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
	"testing/iotest"
)

func msg(t Type, data string) []byte { return AppendMsg(nil, t, []byte(data)) }

func TestPutHeader(t *testing.T) {
	b := make([]byte, 5)
	PutHeader(b, TypeKeepalive, 0)
	if !bytes.Equal(b, []byte{5, 0, 0, 0, 104}) {
		t.Fatalf("keepalive header = % x", b)
	}
	if !bytes.Equal(b, Keepalive[:]) {
		t.Fatal("Keepalive constant differs from PutHeader")
	}
	PutHeader(b, TypeNetResponse, 1500)
	if !bytes.Equal(b, []byte{0xe1, 0x05, 0, 0, 103}) { // 1505 = 0x05e1
		t.Fatalf("103 header = % x", b)
	}
}

// decodeAll reads every message, copying the data out.
func decodeAll(t *testing.T, r io.Reader) ([]Msg, error) {
	t.Helper()
	d := NewDecoder(r, 0)
	var out []Msg
	for {
		m, err := d.Next()
		if err != nil {
			return out, err
		}
		out = append(out, Msg{Type: m.Type, Data: append([]byte(nil), m.Data...)})
	}
}

func TestDecoderSegmentation(t *testing.T) {
	var stream []byte
	stream = append(stream, Keepalive[:]...)
	stream = append(stream, AddrRequest[:]...)
	for i := 0; i < 16; i++ {
		stream = append(stream, msg(TypeNetRequest, string(bytes.Repeat([]byte{byte(i)}, 20+i*90)))...)
	}
	stream = append(stream, msg(TypeNetRequest, string(bytes.Repeat([]byte{7}, MaxDataLen)))...)
	readers := map[string]func() io.Reader{
		"whole":     func() io.Reader { return bytes.NewReader(stream) },
		"one-byte":  func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half":      func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"data-err":  func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) },
		"odd-sizes": func() io.Reader { return &chunkReader{b: stream, sizes: []int{3, 1, 7, 4100, 2, 9000}} },
	}
	for name, mk := range readers {
		t.Run(name, func(t *testing.T) {
			got, err := decodeAll(t, mk())
			if err != io.EOF {
				t.Fatalf("err = %v, want io.EOF", err)
			}
			if len(got) != 19 {
				t.Fatalf("got %d messages, want 19", len(got))
			}
			if got[0].Type != TypeKeepalive || got[1].Type != TypeAddrRequest {
				t.Fatalf("first types %v %v", got[0].Type, got[1].Type)
			}
			for i := 0; i < 16; i++ {
				m := got[2+i]
				if m.Type != TypeNetRequest || len(m.Data) != 20+i*90 || (len(m.Data) > 0 && m.Data[0] != byte(i)) {
					t.Fatalf("message %d: type %v len %d", i, m.Type, len(m.Data))
				}
			}
			if len(got[18].Data) != MaxDataLen {
				t.Fatalf("max message len %d", len(got[18].Data))
			}
		})
	}
}

type chunkReader struct {
	b     []byte
	sizes []int
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := c.sizes[c.i%len(c.sizes)]
	c.i++
	n = min(n, len(p), len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

func TestDecoderShortLengthsAreHeaderOnly(t *testing.T) {
	for l := 0; l <= 5; l++ {
		stream := []byte{byte(l), 0, 0, 0, 104, 5, 0, 0, 0, 100}
		got, err := decodeAll(t, bytes.NewReader(stream))
		if err != io.EOF || len(got) != 2 || got[0].Type != TypeKeepalive || len(got[0].Data) != 0 || got[1].Type != TypeAddrRequest {
			t.Fatalf("length %d: got %v, %v", l, got, err)
		}
	}
}

func TestDecoderFrameErrors(t *testing.T) {
	for _, l := range []uint32{MaxMsgLen + 1, 65536, 0x7fffffff, 0x80000000, 0xffffffff} {
		stream := []byte{byte(l), byte(l >> 8), byte(l >> 16), byte(l >> 24), 102}
		stream = append(stream, make([]byte, 64)...)
		_, err := decodeAll(t, bytes.NewReader(stream))
		var fe *FrameError
		if !errors.As(err, &fe) {
			t.Fatalf("length %#x: err = %v, want FrameError", l, err)
		}
	}
}

func TestDecoderUnknownTypeSkippedByLength(t *testing.T) {
	stream := append(msg(199, "hello world"), msg(TypeKeepalive, "")...)
	got, err := decodeAll(t, bytes.NewReader(stream))
	if err != io.EOF || len(got) != 2 || got[0].Type != 199 || string(got[0].Data) != "hello world" || got[1].Type != TypeKeepalive {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestDecoderTruncated(t *testing.T) {
	stream := msg(TypeNetRequest, "0123456789")
	for cut := 1; cut < len(stream); cut++ {
		_, err := decodeAll(t, bytes.NewReader(stream[:cut]))
		if err != ErrTruncated {
			t.Fatalf("cut %d: err = %v, want ErrTruncated", cut, err)
		}
	}
}

func TestAddrResponseFormat(t *testing.T) {
	r := AddrResponse{
		Addr:  netip.MustParseAddr("13.8.0.2"),
		Route: netip.MustParseAddr("0.0.0.0"),
		DNS:   [3]netip.Addr{netip.MustParseAddr("202.38.120.242"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("202.106.0.20")},
	}
	b, err := AppendAddrResponse(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	want := "13.8.0.2 0.0.0.0 202.38.120.242 8.8.8.8 202.106.0.20 "
	if string(b[5:]) != want {
		t.Fatalf("data = %q, want %q", b[5:], want)
	}
	if int(b[0])|int(b[1])<<8 != 5+len(want) || b[2] != 0 || b[3] != 0 || b[4] != 101 {
		t.Fatalf("header = % x", b[:5])
	}
	if r.String() != want {
		t.Fatalf("String() = %q", r.String())
	}
	back, err := ParseAddrResponse(b[5:])
	if err != nil || back != r {
		t.Fatalf("parse back: %v %v", back, err)
	}
	// Clients see NUL-terminated and space-padded variants from other servers.
	back, err = ParseAddrResponse([]byte("13.8.0.2  0.0.0.0 202.38.120.242 8.8.8.8 202.106.0.20\x00garbage"))
	if err != nil || back != r {
		t.Fatalf("lenient parse: %v %v", back, err)
	}
	if _, err := AppendAddrResponse(nil, AddrResponse{Addr: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Fatal("IPv6 address accepted in a 101")
	}
	for _, bad := range []string{"", "13.8.0.2 0.0.0.0 8.8.8.8", "13.8.0.2 0.0.0.0 8.8.8.8 8.8.8.8 fd00::1", "0.0.0.0 0.0.0.0 1.1.1.1 1.1.1.1 1.1.1.1"} {
		if _, err := ParseAddrResponse([]byte(bad)); err == nil {
			t.Fatalf("ParseAddrResponse(%q) accepted", bad)
		}
	}
}

func TestDecoderNoAllocs(t *testing.T) {
	frame := msg(TypeNetRequest, string(make([]byte, 1400)))
	r := &loopReader{b: frame}
	d := NewDecoder(r, 0)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := d.Next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Next allocates %v times per message", allocs)
	}
}

// loopReader returns its frame over and over.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.b[l.off:])
		n += c
		l.off = (l.off + c) % len(l.b)
	}
	return n, nil
}

func BenchmarkDecode(b *testing.B) {
	frame := msg(TypeNetRequest, string(make([]byte, 1400)))
	d := NewDecoder(&loopReader{b: frame}, 0)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPutHeader(b *testing.B) {
	buf := make([]byte, 1505)
	b.ReportAllocs()
	for b.Loop() {
		PutHeader(buf, TypeNetResponse, 1500)
	}
}

func TestDecoderGrows(t *testing.T) {
	var stream []byte
	for i := 0; i < 200; i++ {
		stream = AppendMsg(stream, TypeNetRequest, bytes.Repeat([]byte{byte(i)}, 1400))
	}
	d := NewDecoder(bytes.NewReader(stream), MaxMsgLen)
	d.SetMaxSize(256 << 10)
	for i := 0; i < 200; i++ {
		m, err := d.Next()
		if err != nil || len(m.Data) != 1400 || m.Data[0] != byte(i) || m.Data[1399] != byte(i) {
			t.Fatalf("message %d: %v %d", i, err, len(m.Data))
		}
	}
	if len(d.buf) <= MaxMsgLen || len(d.buf) > 256<<10 {
		t.Fatalf("buffer is %d bytes after a bulk stream", len(d.buf))
	}
	// A stream of small reads (one message each) keeps the small buffer.
	small := NewDecoder(iotest.OneByteReader(bytes.NewReader(stream[:20*1405])), MaxMsgLen)
	small.SetMaxSize(256 << 10)
	for i := 0; i < 20; i++ {
		if _, err := small.Next(); err != nil {
			t.Fatal(err)
		}
	}
	if len(small.buf) != MaxMsgLen {
		t.Fatalf("trickling stream grew the buffer to %d", len(small.buf))
	}
}

func TestDecoderSmallBufferGrowsForLargeMessages(t *testing.T) {
	var stream []byte
	stream = append(stream, Keepalive[:]...)
	stream = AppendMsg(stream, TypeNetRequest, bytes.Repeat([]byte{9}, MaxDataLen))
	stream = append(stream, Keepalive[:]...)
	for _, r := range []io.Reader{bytes.NewReader(stream), iotest.OneByteReader(bytes.NewReader(stream))} {
		d := NewDecoder(r, 64)
		m1, _ := d.Next()
		m2, err := d.Next()
		if m1.Type != TypeKeepalive || err != nil || len(m2.Data) != MaxDataLen || m2.Data[MaxDataLen-1] != 9 {
			t.Fatalf("large message through a 64-byte decoder: %v %d", err, len(m2.Data))
		}
		if m3, err := d.Next(); err != nil || m3.Type != TypeKeepalive {
			t.Fatalf("after the large message: %v", err)
		}
	}
}
