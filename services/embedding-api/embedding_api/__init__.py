"""The vecsync embedding-api: a sentence-embedding model served over HTTP (see app for the routes)."""
