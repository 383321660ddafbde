"""The report tables of the two benchmarks: the package's perturbations (`libero`) and the official LIBERO-Plus
tasks (`liberoplus`)."""
