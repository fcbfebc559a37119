"""lutc backends: targets, LLVM codegen, JIT and the native thread pool."""
