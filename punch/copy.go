package punch

import (
	"errors"
	"fmt"
	"io"
	"net"
)

// Copy copies in to c and c to out at once, as `portspace punch dial`
// does with standard input and output: at the end of in it half-closes c
// (CloseWrite), and it returns once the peer has closed its side and
// everything was copied both ways.
func Copy(c net.Conn, in io.Reader, out io.Writer) error {
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, in)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			if cerr := cw.CloseWrite(); err == nil {
				err = cerr
			}
		}
		sent <- err
	}()
	_, rerr := io.Copy(out, c)
	if rerr != nil && !errors.Is(rerr, net.ErrClosed) {
		return fmt.Errorf("punch: copy from the peer: %w", rerr)
	}
	if err := <-sent; err != nil {
		return fmt.Errorf("punch: copy to the peer: %w", err)
	}
	return nil
}
