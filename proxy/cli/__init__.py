"""The `recguard` command; training commands import torch only when run."""
