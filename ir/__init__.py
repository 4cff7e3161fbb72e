"""Graph IR: nodes, op registry, tracing builder, autodiff, reference interpreter, passes, text form."""
