"""Framework integrations; each imports its framework lazily (``rrattention.hf`` → ``integrations.hf``)."""
