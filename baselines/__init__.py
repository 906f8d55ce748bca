"""What the method is compared against: unconstrained attention, post-hoc attribution
methods (captum) and alternative solvers."""
