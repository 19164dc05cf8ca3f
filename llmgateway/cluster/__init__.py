"""What the replicas share through Redis (the key cache, revocations) and the reconciliation that
bounds how stale a replica may be."""
