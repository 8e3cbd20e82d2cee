"""Host backends: the protocol every backend implements and the real Linux/NVIDIA host."""
