"""lutc runtime: run quantized LLaMA-family models with lutc kernels (see issue 4)."""
