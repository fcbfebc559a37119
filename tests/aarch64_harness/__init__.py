"""The AArch64 emulation harness: harness.c and the Python side that links and runs it under qemu."""
