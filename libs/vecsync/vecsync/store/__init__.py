"""The implementations of vecsync.vectorstore.VectorStore: a Qdrant server, and Qdrant's engine embedded in-process."""
