"""Pure-PyTorch reference implementations: the spec of every op, its CPU path and the
tests' oracle. Short and obviously right; they run in any dtype, float64 included."""
