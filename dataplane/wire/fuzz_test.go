package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzDecoder feeds arbitrary streams, whole and one byte at a time. The
// decoder must never panic, never return data longer than MaxDataLen, and
// decode the same messages however the stream is split.
func FuzzDecoder(f *testing.F) {
	f.Add(Keepalive[:])
	f.Add(AddrRequest[:])
	f.Add(append(AddrRequest[:], Keepalive[:]...))
	f.Add([]byte("\x3c\x00\x00\x00\x65" + "13.8.0.2 0.0.0.0 202.38.120.242 8.8.8.8 202.106.0.20 "))
	f.Add(AppendMsg(nil, TypeNetRequest, icmpEcho()))
	f.Add([]byte{0, 0, 0, 0, 104, 1, 0, 0, 0, 100})
	f.Add([]byte{0x06, 0x10, 0, 0, 102})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 102})
	f.Add(AppendMsg(nil, 199, []byte("fork extension")))
	f.Fuzz(func(t *testing.T, stream []byte) {
		whole, errWhole := collect(bytes.NewReader(stream), MaxMsgLen)
		split, errSplit := collect(iotest.OneByteReader(bytes.NewReader(stream)), 16)
		if len(whole) != len(split) {
			t.Fatalf("whole stream gave %d messages, byte by byte %d", len(whole), len(split))
		}
		for i := range whole {
			if whole[i].Type != split[i].Type || !bytes.Equal(whole[i].Data, split[i].Data) {
				t.Fatalf("message %d differs by segmentation", i)
			}
			if len(whole[i].Data) > MaxDataLen {
				t.Fatalf("message %d has %d bytes of data", i, len(whole[i].Data))
			}
		}
		var fe1, fe2 *FrameError
		if errors.As(errWhole, &fe1) != errors.As(errSplit, &fe2) || (errWhole == io.EOF) != (errSplit == io.EOF) {
			t.Fatalf("errors differ by segmentation: %v vs %v", errWhole, errSplit)
		}
	})
}

// collect decodes everything; a buffer of MaxMsgLen exercises compaction, a
// tiny one growth.
func collect(r io.Reader, size int) ([]Msg, error) {
	d := NewDecoder(r, size)
	var out []Msg
	for {
		m, err := d.Next()
		if err != nil {
			return out, err
		}
		out = append(out, Msg{Type: m.Type, Data: append([]byte(nil), m.Data...)})
	}
}

// icmpEcho is an ICMP echo request from 13.8.0.2 to 13.8.0.1.
func icmpEcho() []byte {
	return []byte{
		0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00,
		13, 8, 0, 2, 13, 8, 0, 1,
		0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
	}
}
