"""vecsync: keep a Qdrant collection in sync with a MongoDB collection."""
