"""Stand-ins for hardware and its libraries (CuPy, libcublas) used by the CPU test suite."""
