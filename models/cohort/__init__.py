"""The cohort domain: covariates in physical units and their conditioning vector, cohort designs with
per-subject seeds, and NIfTI geometry. Depends on nothing else in the package but :mod:`models.errors`."""
