"""nn.Module wrappers of the ops (thin: state + a call to the functional op)."""
