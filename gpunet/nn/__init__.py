"""Network maths on any Array-API namespace, with no state: activations, losses, initial weights and the
flat parameter layout."""
