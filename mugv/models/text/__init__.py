"""Caption encoders (MiniLM on CPU, T5 as in MUG-V) behind one interface."""
