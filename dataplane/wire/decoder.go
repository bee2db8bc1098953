package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// FrameError reports a length field outside 0..MaxMsgLen. After it the byte
// stream cannot be trusted: the connection must be closed.
type FrameError struct {
	Length int64 // the length field read as a signed 32-bit int, like the C struct
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("framing error: length field %d outside 5..%d", e.Length, MaxMsgLen)
}

// ErrTruncated is returned when the stream ends inside a message.
var ErrTruncated = errors.New("stream ended inside a message")

// Msg is one decoded message. Data aliases the decoder's buffer and is valid
// only until the next call to Next.
type Msg struct {
	Type Type
	Data []byte
}

// DefaultBufferSize holds many full-size messages, so one read system call
// usually carries a batch.
const DefaultBufferSize = 64 << 10

// Decoder reassembles messages from a byte stream, whatever the segmentation.
type Decoder struct {
	r    io.Reader
	buf  []byte
	head int // start of unconsumed bytes
	tail int // end of buffered bytes
	err  error
	max  int // the buffer may grow up to this size
}

// NewDecoder returns a decoder reading from r with a buffer of size bytes
// (DefaultBufferSize when size is 0). A buffer smaller than a message grows
// to fit it; see also SetMaxSize.
func NewDecoder(r io.Reader, size int) *Decoder {
	if size == 0 {
		size = DefaultBufferSize
	}
	size = max(size, 2*HeaderLen)
	return &Decoder{r: r, buf: make([]byte, size), max: size}
}

// SetMaxSize lets the buffer grow up to n bytes while reads keep filling
// it: a busy stream then needs fewer, larger reads, while an idle one keeps
// its small buffer (memory per client matters at ten thousand clients).
func (d *Decoder) SetMaxSize(n int) { d.max = max(n, len(d.buf)) }

// Ready reports whether Next can return without reading: a whole message
// (or a framing error) is buffered. Callers batching work flush before a
// Next that would block.
func (d *Decoder) Ready() bool {
	if d.tail-d.head < HeaderLen {
		return false
	}
	raw := int32(binary.LittleEndian.Uint32(d.buf[d.head:]))
	if raw < 0 || raw > MaxMsgLen {
		return true
	}
	return d.tail-d.head >= max(int(raw), HeaderLen)
}

// Next returns the next message. Lengths 0..4 are header-only messages (one
// known client sends them); a length above MaxMsgLen, or negative, yields a
// *FrameError. io.EOF means the stream ended cleanly between messages.
func (d *Decoder) Next() (Msg, error) {
	if err := d.fill(HeaderLen); err != nil {
		return Msg{}, err
	}
	h := d.buf[d.head:]
	raw := int64(int32(binary.LittleEndian.Uint32(h)))
	if raw < 0 || raw > MaxMsgLen {
		d.err = &FrameError{Length: raw}
		return Msg{}, d.err
	}
	n := int(raw)
	if n < HeaderLen {
		n = HeaderLen
	}
	if err := d.fill(n); err != nil {
		return Msg{}, err
	}
	m := Msg{Type: Type(d.buf[d.head+4]), Data: d.buf[d.head+HeaderLen : d.head+n : d.head+n]}
	d.head += n
	return m, nil
}

// Buffered returns the bytes read but not yet returned by Next: the start
// of a message not complete yet, or whole messages not asked for. It
// aliases the buffer until the next call to Next.
func (d *Decoder) Buffered() []byte { return d.buf[d.head:d.tail] }

// Prime puts b in front of what the decoder reads next, as if it had been
// read from the stream: the bytes another decoder had buffered (Buffered)
// when its connection was handed over. Call it before the first Next.
func (d *Decoder) Prime(b []byte) {
	if len(b) == 0 {
		return
	}
	if d.tail-d.head+len(b) > len(d.buf) {
		d.resize(max(len(d.buf), d.tail-d.head+len(b)))
	}
	if d.head > 0 {
		d.tail = copy(d.buf, d.buf[d.head:d.tail])
		d.head = 0
	}
	copy(d.buf[len(b):], d.buf[:d.tail])
	copy(d.buf, b)
	d.tail += len(b)
}

// grow doubles the buffer (up to max), keeping the unconsumed bytes.
func (d *Decoder) grow() { d.resize(min(2*len(d.buf), d.max)) }

func (d *Decoder) resize(size int) {
	nb := make([]byte, size)
	d.tail = copy(nb, d.buf[d.head:d.tail])
	d.head = 0
	d.buf = nb
}

// fill makes sure at least n unconsumed bytes are buffered.
func (d *Decoder) fill(n int) error {
	if d.tail-d.head >= n {
		return nil
	}
	if d.err != nil {
		return d.err
	}
	if n > len(d.buf) {
		// A message larger than a small (idle client's) buffer.
		d.resize(max(n, min(2*len(d.buf), MaxMsgLen)))
	} else if d.head+n > len(d.buf) {
		// Not enough room after head: move the partial message to the front.
		d.tail = copy(d.buf, d.buf[d.head:d.tail])
		d.head = 0
	}
	for d.tail-d.head < n {
		free := len(d.buf) - d.tail
		m, err := d.r.Read(d.buf[d.tail:])
		d.tail += m
		if m == free && 2*free >= len(d.buf) && len(d.buf) < d.max {
			d.grow() // a read filled most of the buffer: more is waiting
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// A deadline pauses the reader (a hand-off stops it at a
				// message boundary): nothing is lost, the next call reads on.
				if d.tail-d.head >= n {
					return nil
				}
				return err
			}
			if d.tail-d.head >= n {
				// Keep the error for the next call; this message is whole.
				d.err = err
				return nil
			}
			if err == io.EOF && d.tail > d.head {
				err = ErrTruncated
			}
			d.err = err
			return err
		}
	}
	return nil
}
