"""What runs on the device: numpy plus one runtime, never torch."""
