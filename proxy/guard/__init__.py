"""Rules compiled from the training profile, the checks, rename/merge diagnosis, the contract, `recguard check`."""
