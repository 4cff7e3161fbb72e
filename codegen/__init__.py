"""Lowering of ir graphs to LLVM IR with llvmlite, JIT and ahead-of-time compilation."""
