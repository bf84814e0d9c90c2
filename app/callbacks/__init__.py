"""Status callbacks: the outbox the database writes, its dispatcher, its API (CONTRACT §4.5)."""
