package udpbatch

// Next cuts the first datagram off run, the payload of one Msg, and returns
// it and the rest. seg is what Seg said of that Msg: 0 for a datagram that
// was not coalesced (run is one datagram), else the size of the run's
// datagrams, of which the last may be shorter.
func Next(run []byte, seg int) (d, rest []byte) {
	if seg <= 0 || seg >= len(run) {
		return run, nil
	}
	return run[:seg], run[seg:]
}
