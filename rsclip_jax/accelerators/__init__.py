"""Devices: meshes and shardings, several hosts, accelerator targets, memory settings, FLOPs, the CPU's allocator."""
