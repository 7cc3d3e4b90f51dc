"""The BIDS dataset a cohort becomes: sidecars, participants.tsv, dataset-level files, and the local writer
that samples a cohort into one folder (the service's workers write the same files to object storage)."""
