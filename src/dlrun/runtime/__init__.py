"""The process's runtime: devices and processes, signals, the allocator, the compile cache."""
